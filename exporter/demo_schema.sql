-- The InsightDesk helpdesk schema of the seed document, with its indexes and some data.
CREATE TABLE organizations (
  id text PRIMARY KEY,
  name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
  id text PRIMARY KEY,
  organization_id text NOT NULL REFERENCES organizations (id),
  name text NOT NULL,
  email text NOT NULL UNIQUE
);

CREATE TABLE tickets (
  id bigserial PRIMARY KEY,
  title text NOT NULL,
  description text,
  status text NOT NULL DEFAULT 'OPEN',
  priority text NOT NULL DEFAULT 'MEDIUM',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  first_response_at timestamptz,
  resolved_at timestamptz,
  organization_id text NOT NULL REFERENCES organizations (id),
  assignee_id text REFERENCES users (id),
  created_by_id text NOT NULL REFERENCES users (id)
);

CREATE TABLE comments (
  id bigserial PRIMARY KEY,
  ticket_id bigint NOT NULL REFERENCES tickets (id),
  user_id text REFERENCES users (id),
  body text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE articles (
  id bigserial PRIMARY KEY,
  title text NOT NULL,
  slug text NOT NULL UNIQUE,
  content text NOT NULL,
  status text NOT NULL DEFAULT 'DRAFT',
  category_id text,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Foreign key indexes
CREATE INDEX idx_tickets_assignee_id ON tickets (assignee_id);
CREATE INDEX idx_tickets_organization_id ON tickets (organization_id);
CREATE INDEX idx_tickets_created_by_id ON tickets (created_by_id);
CREATE INDEX idx_comments_ticket_id ON comments (ticket_id);
CREATE INDEX idx_comments_user_id ON comments (user_id);
-- Status and date filtering
CREATE INDEX idx_tickets_status ON tickets (status);
CREATE INDEX idx_tickets_created_at ON tickets (created_at DESC);
CREATE INDEX idx_tickets_updated_at ON tickets (updated_at DESC);
-- Compound and partial indexes
CREATE INDEX idx_tickets_org_status_created ON tickets (organization_id, status, created_at DESC);
CREATE INDEX idx_tickets_assignee_status ON tickets (assignee_id, status)
  WHERE assignee_id IS NOT NULL;
CREATE INDEX idx_active_tickets ON tickets (created_at DESC, priority)
  WHERE status IN ('OPEN', 'IN_PROGRESS', 'PENDING');
CREATE INDEX idx_unassigned_tickets ON tickets (organization_id, priority DESC, created_at DESC)
  WHERE assignee_id IS NULL AND status = 'OPEN';
CREATE INDEX idx_published_articles ON articles (category_id, updated_at DESC)
  WHERE status = 'PUBLISHED';
-- Full-text search
CREATE INDEX idx_tickets_search ON tickets
  USING GIN (to_tsvector('english', title || ' ' || COALESCE(description, '')));
CREATE INDEX idx_articles_search ON articles
  USING GIN (to_tsvector('english', title || ' ' || content));

-- Audit logs, partitioned by month: from three months ago to two months ahead.
CREATE TABLE audit_logs (
  id uuid DEFAULT gen_random_uuid(),
  action varchar(50) NOT NULL,
  entity_type varchar(50) NOT NULL,
  entity_id varchar(50) NOT NULL,
  user_id varchar(50),
  organization_id varchar(50) NOT NULL,
  metadata jsonb,
  created_at timestamptz DEFAULT now(),
  PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

DO $$
DECLARE
  month date;
BEGIN
  FOR i IN -3..2 LOOP
    month := date_trunc('month', now() + make_interval(months => i))::date;
    EXECUTE format(
      'CREATE TABLE %I PARTITION OF audit_logs FOR VALUES FROM (%L) TO (%L)',
      'audit_logs_' || to_char(month, 'YYYY_MM'), month, (month + interval '1 month')::date);
  END LOOP;
END
$$;

INSERT INTO organizations (id, name)
SELECT 'org_' || g, 'Organization ' || g FROM generate_series(1, 20) g;

INSERT INTO users (id, organization_id, name, email)
SELECT 'user_' || g, 'org_' || (1 + g % 20), 'User ' || g, 'user' || g || '@example.com'
FROM generate_series(1, 200) g;

INSERT INTO tickets (title, description, status, priority, created_at, first_response_at,
                     resolved_at, organization_id, assignee_id, created_by_id)
SELECT 'Ticket ' || g,
       'Something is broken, case ' || g,
       (ARRAY['OPEN', 'IN_PROGRESS', 'PENDING', 'RESOLVED', 'CLOSED'])[1 + g % 5],
       (ARRAY['LOW', 'MEDIUM', 'HIGH', 'URGENT'])[1 + g % 4],
       now() - make_interval(hours => g % 2000),
       now() - make_interval(hours => g % 2000) + interval '2 hours',
       CASE WHEN g % 5 >= 3 THEN now() - make_interval(hours => g % 2000) + interval '1 day' END,
       'org_' || (1 + g % 20),
       CASE WHEN g % 3 = 0 THEN NULL ELSE 'user_' || (1 + g % 200) END,
       'user_' || (1 + (g * 7) % 200)
FROM generate_series(1, 20000) g;

INSERT INTO comments (ticket_id, user_id, body)
SELECT 1 + g % 20000, 'user_' || (1 + g % 200), 'Comment ' || g
FROM generate_series(1, 40000) g;

INSERT INTO articles (title, slug, content, status, category_id)
SELECT 'Article ' || g, 'article-' || g, repeat('How to fix it. ', 50),
       CASE WHEN g % 2 = 0 THEN 'PUBLISHED' ELSE 'DRAFT' END, 'cat_' || (g % 10)
FROM generate_series(1, 500) g;

INSERT INTO audit_logs (action, entity_type, entity_id, user_id, organization_id, created_at)
SELECT 'UPDATE', 'ticket', (g % 20000)::text, 'user_' || (g % 200), 'org_' || (g % 20),
       now() - make_interval(mins => g % (60 * 24 * 80))
FROM generate_series(1, 30000) g;

CREATE MATERIALIZED VIEW mv_dashboard_stats AS
SELECT organization_id,
       date(created_at) AS date,
       status,
       priority,
       count(*) AS ticket_count,
       avg(EXTRACT(EPOCH FROM (first_response_at - created_at))) AS avg_first_response_seconds,
       avg(EXTRACT(EPOCH FROM (resolved_at - created_at))) AS avg_resolution_seconds
FROM tickets
WHERE created_at >= CURRENT_DATE - INTERVAL '90 days'
GROUP BY organization_id, date(created_at), status, priority
WITH DATA;

CREATE UNIQUE INDEX idx_mv_dashboard_org_date
  ON mv_dashboard_stats (organization_id, date DESC, status, priority);

-- The seed's "Adjust for high-write tables".
ALTER TABLE tickets SET (
  autovacuum_vacuum_threshold = 50,
  autovacuum_vacuum_scale_factor = 0.02,
  autovacuum_analyze_threshold = 50,
  autovacuum_analyze_scale_factor = 0.01
);

ANALYZE;
