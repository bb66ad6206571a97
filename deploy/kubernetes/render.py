#!/usr/bin/env python3
"""Render a kustomization of this tree without kustomize: python deploy/kubernetes/render.py DIR.

No kustomize binary installs here from apt, PyPI or npm, so the tests render the base and the
overlay with this: the subset of kustomize these files use, and nothing more. A
kustomization with any other field is refused (:class:`Unsupported`), so the subset cannot
silently diverge from what ``kubectl kustomize`` would make; where kubectl is installed, the
tests also compare the two outputs.

Supported: ``resources`` (files, and directories holding a kustomization), ``namespace``
(set on every resource), ``images`` (``name`` -> ``newName``/``newTag`` on containers) and
``patches`` given as a file of JSON 6902 operations (``add``, ``remove``, ``replace``) with a
``target`` of ``kind`` and ``name``. Prints the resources as one YAML stream.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
Resource = dict[str, Any]


class Unsupported(ValueError):
    """The kustomization uses something this renderer does not do."""


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise Unsupported(f"JSON pointer {path!r} must start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _walk(document: Any, parts: list[str]) -> Any:
    for part in parts:
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


def apply_json_patch(document: Resource, operations: Sequence[dict[str, Any]]) -> Resource:
    """Return ``document`` with JSON 6902 ``add``/``remove``/``replace`` operations applied.

    >>> apply_json_patch({"a": [1]}, [{"op": "add", "path": "/a/-", "value": 2}])
    {'a': [1, 2]}
    >>> apply_json_patch({"a": {"b": 1}}, [{"op": "remove", "path": "/a/b"}])
    {'a': {}}
    """
    result = copy.deepcopy(document)
    for operation in operations:
        *parents, last = _pointer(operation["path"])
        container = _walk(result, parents)
        op = operation["op"]
        if op == "add":
            if isinstance(container, list):
                index = len(container) if last == "-" else int(last)
                container.insert(index, copy.deepcopy(operation["value"]))
            else:
                container[last] = copy.deepcopy(operation["value"])
        elif op == "replace":
            key: Any = int(last) if isinstance(container, list) else last
            if isinstance(container, dict) and key not in container:
                raise Unsupported(f"replace of missing {operation['path']}")
            container[key] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del container[int(last) if isinstance(container, list) else last]
        else:
            raise Unsupported(f"JSON patch op {op!r}")
    return result


def _load_documents(path: Path) -> list[Resource]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def _set_images(resource: Resource, images: Sequence[dict[str, str]]) -> None:
    pod = resource.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name, _, tag = container["image"].partition(":")
        for image in images:
            if image["name"] == name:
                unknown = set(image) - {"name", "newName", "newTag"}
                if unknown:
                    raise Unsupported(f"images: {sorted(unknown)}")
                new_tag = image.get("newTag", tag)
                container["image"] = image.get("newName", name) + (f":{new_tag}" if new_tag else "")


def render(directory: Path) -> list[Resource]:
    """Return the resources the kustomization in ``directory`` makes."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise Unsupported(f"{directory}: kustomization fields {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources += render(path)
        else:
            resources += _load_documents(path)
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path", "target"} or set(patch["target"]) - {"kind", "name"}:
            raise Unsupported(f"{directory}: patch {patch}")
        operations = yaml.safe_load((directory / patch["path"]).read_text())
        if not isinstance(operations, list):
            raise Unsupported(f"{patch['path']}: only JSON 6902 patches (a list of operations)")
        matched = False
        for index, resource in enumerate(resources):
            target = patch["target"]
            if resource["kind"] == target["kind"] and resource["metadata"]["name"] == target.get(
                "name", resource["metadata"]["name"]
            ):
                resources[index] = apply_json_patch(resource, operations)
                matched = True
        if not matched:
            raise Unsupported(f"{directory}: patch target {patch['target']} matches nothing")
    for resource in resources:
        _set_images(resource, kustomization.get("images", []))
        if "namespace" in kustomization:
            resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources


def main(argv: Sequence[str] | None = None) -> int:
    """Print the rendered resources of the kustomization directory given."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: render.py KUSTOMIZATION_DIR", file=sys.stderr)
        return 2
    print(yaml.safe_dump_all(render(Path(args[0])), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
