-- Images and their jobs. An image's status only moves forward (see
-- image_status_rank): a late retry can never undo a success.

CREATE FUNCTION image_status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT CASE status
    WHEN 'queued' THEN 0
    WHEN 'processing' THEN 1
    WHEN 'failed' THEN 2
    WHEN 'staged' THEN 3
  END
$$;

CREATE TABLE images (
  id             text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,128}$'),
  original_key   text NOT NULL,
  mask_key       text,
  room_type      text NOT NULL,
  style          text NOT NULL,
  seed           bigint CHECK (seed BETWEEN 0 AND 4294967295),
  staged_key     text,
  status         text NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'processing', 'staged', 'failed')),
  error_code     text,
  error_message  text,
  inference_meta jsonb,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  CHECK (status <> 'staged' OR (staged_key IS NOT NULL AND inference_meta IS NOT NULL)),
  CHECK (status <> 'failed' OR error_code IS NOT NULL)
);

CREATE INDEX images_status ON images (status) WHERE status IN ('queued', 'processing');

CREATE TABLE jobs (
  image_id    text PRIMARY KEY REFERENCES images (id) ON DELETE CASCADE,
  tier        text NOT NULL CHECK (tier IN ('business', 'pro', 'free')),
  attempts    integer NOT NULL DEFAULT 0,
  enqueued_at timestamptz NOT NULL DEFAULT now(),
  started_at  timestamptz,
  finished_at timestamptz,
  metrics     jsonb
);
