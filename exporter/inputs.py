"""Read what the operator gives: files, TOML, YAML, JSON and text, every flaw one line.

Each reader here turns whatever a file or a value can be — a directory, a FIFO, /dev/zero, a
file of gigabytes, bytes that are not UTF-8, a NUL, nesting thousands deep, a number of
thousands of digits, a YAML billion laughs — into the `error` class it is given, with a
one-line message naming the file (and the line or field), never a traceback, a hang or
memory without end. The settings, the web config, the collector files and the
postgres_exporter files all read through it.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from exporter.errors import ConfigError, ExporterError

#: A settings, collector, certificate or secret file larger than this is refused unread.
MAX_FILE_BYTES = 4 << 20
#: YAML is parsed in pure Python (libyaml's parser crashes on deep nesting), a few seconds a
#: MiB: smaller still (postgres_exporter's own queries.yaml is 10 KiB).
MAX_YAML_BYTES = 256 << 10
#: Values a YAML document may hold once its aliases are expanded, beyond its own nodes.
MAX_ALIASED_VALUES = 100_000
#: How deep lists and mappings may nest in a file or a JSON value.
MAX_DEPTH = 64
# What os.environ and sys.argv hold for bytes that were not UTF-8 (surrogateescape).
_SURROGATE = re.compile("[\ud800-\udfff]")


def read_file(
    path: Path, error: type[ExporterError] = ConfigError, *, limit: int = MAX_FILE_BYTES
) -> bytes:
    """Return a file's bytes; raise `error` with one line saying why it cannot be read.

    Only a regular file of at most `limit` bytes is read: a FIFO or a device such as
    /dev/zero would never end, and a file of gigabytes is no settings file. The file is
    opened without blocking and then looked at, so a name swapped for a FIFO in between
    cannot hang the open either.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError:  # a NUL in the name
        raise error(f"{str(path)[:80]!r}: not a valid file name") from None
    try:
        mode = os.fstat(fd)
        if stat.S_ISDIR(mode.st_mode):
            raise error(f"{path}: is a directory, not a file")
        if not stat.S_ISREG(mode.st_mode):
            raise error(f"{path}: not a regular file")
        if mode.st_size > limit:
            raise error(f"{path}: larger than {limit >> 10} KiB")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(limit + 1)  # /proc files say 0 bytes: the read is bounded too
    except OSError as exc:  # EIO (/proc/self/mem)
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise error(f"{path}: larger than {limit >> 10} KiB")
    return data


def read_text_file(
    path: Path, error: type[ExporterError] = ConfigError, *, limit: int = MAX_FILE_BYTES
) -> str:
    """Return a UTF-8 file's text; raise `error` with one line saying why it cannot be read."""
    data = read_file(path, error, limit=limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if "\0" in text:
        # libpq would end a password or a DSN read from the file at the NUL, silently.
        raise error(f"{path}: a NUL byte, in no text file")
    return text


def is_directory(path: Path, error: type[ExporterError] = ConfigError) -> bool:
    """Tell whether a path names a directory; raise `error` if it cannot be looked at."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:  # a name too long, a symlink loop, no permission
        raise error(f"{str(path)[:200]}: {exc.strerror or exc}") from None
    except ValueError:
        raise error(f"{str(path)[:80]!r}: not a valid file name") from None


def parse_toml(text: str, source: str, error: type[ExporterError] = ConfigError) -> dict[str, Any]:
    """Parse TOML; raise `error` naming `source` (tomllib's own line and column) if it is not."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:
        raise error(f"{source}: not valid TOML: nested too deeply") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise error(f"{source}: not valid TOML: {str(exc).split(';')[0]}") from None
    problem = depth_problem(document)
    if problem:
        raise error(f"{source}: {problem}")
    return document


def parse_json(text: str) -> Any:
    """Parse a JSON value from the environment; raise ValueError with one line if it is not.

    >>> parse_json('["a", "b"]')
    ['a', 'b']
    >>> parse_json("[" * 100000)
    Traceback (most recent call last):
    ...
    ValueError: not JSON: nested too deeply
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise ValueError(f"not JSON: {str(exc).split(';')[0]}") from None
    problem = depth_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def depth_problem(value: Any, limit: int = MAX_DEPTH) -> str | None:
    """Return why a parsed value nests too deeply to be a setting, or None.

    >>> depth_problem({"a": [1, {"b": 2}]}) is None
    True
    >>> depth_problem([[[[]]]], limit=3)
    'lists and mappings nest more than 3 deep'
    """
    level: list[Any] = [value]
    for _ in range(limit):
        level = [
            child
            for item in level
            if isinstance(item, dict | list | tuple)
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list | tuple)
        ]
        if not level:
            return None
    return f"lists and mappings nest more than {limit} deep"


def text_problem(value: Any, where: str = "") -> str | None:
    """Return where a value holds text no server or file name can take (NUL, not UTF-8).

    Strings from the environment or the command line that were not UTF-8 reach Python with
    lone surrogates; psycopg, libpq and the kernel cannot encode them, and a NUL ends a C
    string early (what follows would be silently dropped).

    >>> text_problem({"a": ["ok", "x\\x00y"]})
    'a.1: a NUL character'
    >>> text_problem("caf\\udce9")
    'not UTF-8 (at character 4)'
    """
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    elif isinstance(value, Path):
        value = str(value)
    prefix = f"{where}: " if where else ""
    if isinstance(value, str):
        if "\0" in value:
            return f"{prefix}a NUL character"
        surrogate = _SURROGATE.search(value)
        if surrogate:  # where, not which byte: the value may be a password
            return f"{prefix}not UTF-8 (at character {surrogate.start() + 1})"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            problem = text_problem(key, where) or text_problem(item, inner)
            if problem:
                return problem
    elif isinstance(value, list | tuple):
        for number, item in enumerate(value):
            problem = text_problem(item, f"{where}.{number}" if where else str(number))
            if problem:
                return problem
    return None


def usable_text(value: Any) -> Any:
    """Return a value unchanged; raise ValueError if it holds a NUL or bytes not UTF-8.

    For pydantic validators: the field (or the place within it) is named, never the value.
    """
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


#: The longest line a message is printed as: a value it quotes may be 100,000 characters.
MAX_LINE = 1000


def one_line(message: str) -> str:
    r"""Return a message as one printable line of at most MAX_LINE characters.

    A file name may hold a newline, and a message may quote a whole flag or key: what is in
    the middle of an overlong line gives way, the start (file, field) and the end (the
    problem) stay.

    >>> one_line("bad\nname: no such file")
    'bad\\nname: no such file'
    >>> line = one_line("start " + "x" * 5000 + " end")
    >>> len(line) <= MAX_LINE, line.startswith("start x"), line.endswith("x end")
    (True, True, True)
    """
    if not message.isprintable():
        message = "".join(
            char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
            for char in message
        )
    if len(message) > MAX_LINE:
        keep = (MAX_LINE - 25) // 2
        cut = len(message) - 2 * keep
        message = f"{message[:keep]} [{cut} characters] {message[-keep:]}"
    return message


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, strict where exporter-toolkit's Go YAML is: no duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: the base class says so, with its line
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {str(key)[:60]!r} given twice", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """Return (values with every alias expanded, values in the document) of a composed node.

    Iterative and memoised, so neither deep nesting nor a billion laughs costs more than the
    document's own size; an alias to a node that holds it counts as too many.
    """
    sizes: dict[int, int] = {}
    distinct: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if children_done:
            on_path.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), 1 << 62)
            continue
        if id(node) in on_path:
            return 1 << 62, len(distinct)  # an alias inside its own anchor: endless
        on_path.add(id(node))
        distinct.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
        for child in children:
            if id(child) in on_path:
                return 1 << 62, len(distinct)
    return sizes[id(root)], len(distinct)


def load_yaml(path: Path, error: type[ExporterError] = ConfigError) -> Any:
    """Read a YAML file; raise `error` with one line naming the file (and line) if it is bad.

    As Go's YAML for exporter-toolkit: a key given twice is an error, and aliases that expand
    far beyond the document (a billion laughs) are refused ("excessive aliasing").
    """
    text = read_text_file(path, error, limit=MAX_YAML_BYTES)
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # reads the text at once: a NUL is refused here
        node = loader.get_single_node()
        if node is None:
            return None
        expanded, own = _expanded_size(node)
        if expanded > own + MAX_ALIASED_VALUES:
            raise error(
                f"{path}: aliases expand to more than {MAX_ALIASED_VALUES} values"
                " (excessive aliasing)"
            )
        document = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = exc.problem or exc.context or "unreadable"
        raise error(f"{path}: not valid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise error(f"{path}: not valid YAML: nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # a bad date, an integer of 5000 digits
        raise error(f"{path}: not valid YAML: {str(exc).split(';')[0]}") from None
    finally:
        if loader is not None:
            loader.dispose()
    too_deep = depth_problem(document)
    if too_deep:
        raise error(f"{path}: {too_deep}")
    return document
