// Package store keeps images and their jobs in PostgreSQL. An image's
// status moves forward only — queued, processing, then failed or staged
// (a success recorded after a failure wins) — and the rule lives in the
// SQL of every update, so a late or duplicate attempt can never undo a
// result, whatever order the updates arrive in.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Image statuses.
const (
	StatusQueued     = "queued"
	StatusProcessing = "processing"
	StatusStaged     = "staged"
	StatusFailed     = "failed"
)

// ErrNotFound is returned by Get for an unknown image.
var ErrNotFound = errors.New("store: no such image")

// ErrConflict is returned by Enqueue when the image_id is already recorded
// with other parameters.
var ErrConflict = errors.New("store: image_id already recorded with other parameters")

// Image is what a job stages: the request's parameters.
type Image struct {
	ID          string  `json:"image_id"`
	OriginalKey string  `json:"original_key"`
	MaskKey     string  `json:"mask_key,omitempty"`
	RoomType    string  `json:"room_type"`
	Style       string  `json:"style"`
	Seed        *uint32 `json:"seed,omitempty"`
	// Label is the disclosure label; nil takes the service's default.
	Label   *bool `json:"label,omitempty"`
	Upscale bool  `json:"upscale,omitempty"`
}

// Store is a pool of connections to the database.
type Store struct {
	pool *pgxpool.Pool
}

// Open connects to the database at url and checks that it answers.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's message may quote the URL, password included.
		return nil, errors.New("store: DATABASE_URL is not a valid PostgreSQL URL or key=value string")
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("store: connecting to PostgreSQL: %w", err)
	}
	return &Store{pool: pool}, nil
}

// Close closes every connection.
func (s *Store) Close() { s.pool.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// Enqueued says what Enqueue found.
type Enqueued struct {
	// New is true when this call recorded the image.
	New bool
	// Status is the image's status; an image already staged or failed is
	// not queued again.
	Status string
}

// Enqueue records img and its job in one transaction and calls enqueue
// before committing, so that a refused enqueue (a full queue, a duplicate
// task) leaves no row behind. An image already recorded with the same
// parameters is not an error: while queued or processing, enqueue is still
// called (it restores a task lost after an earlier enqueue failed to
// commit); once staged or failed, it is not.
func (s *Store) Enqueue(ctx context.Context, img Image, tier string, enqueue func() error) (Enqueued, error) {
	var out Enqueued
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO images (id, original_key, mask_key, room_type, style, seed, label, upscale)
			VALUES ($1, $2, nullif($3, ''), $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING`,
			img.ID, img.OriginalKey, img.MaskKey, img.RoomType, img.Style, seed(img.Seed), img.Label, img.Upscale)
		if err != nil {
			return fmt.Errorf("store: recording the image: %w", err)
		}
		out.New, out.Status = tag.RowsAffected() == 1, StatusQueued
		if !out.New {
			var have Image
			var haveSeed *int64
			var mask *string
			err := tx.QueryRow(ctx, `SELECT original_key, mask_key, room_type, style, seed, label, upscale, status FROM images WHERE id = $1 FOR UPDATE`, img.ID).
				Scan(&have.OriginalKey, &mask, &have.RoomType, &have.Style, &haveSeed, &have.Label, &have.Upscale, &out.Status)
			if err != nil {
				return fmt.Errorf("store: reading the image: %w", err)
			}
			have.ID, have.MaskKey, have.Seed = img.ID, deref(mask), unseed(haveSeed)
			if !sameParameters(have, img) {
				return ErrConflict
			}
			if out.Status == StatusStaged || out.Status == StatusFailed {
				return nil
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO jobs (image_id, tier) VALUES ($1, $2) ON CONFLICT (image_id) DO NOTHING`, img.ID, tier); err != nil {
			return fmt.Errorf("store: recording the job: %w", err)
		}
		return enqueue()
	})
	return out, err
}

func sameParameters(a, b Image) bool {
	sameSeed := (a.Seed == nil) == (b.Seed == nil) && (a.Seed == nil || *a.Seed == *b.Seed)
	sameLabel := (a.Label == nil) == (b.Label == nil) && (a.Label == nil || *a.Label == *b.Label)
	return a.OriginalKey == b.OriginalKey && a.MaskKey == b.MaskKey && a.RoomType == b.RoomType && a.Style == b.Style &&
		sameSeed && sameLabel && a.Upscale == b.Upscale
}

// Started is what Start found.
type Started struct {
	// Status is the image's status after the start: processing, or staged
	// or failed when an earlier attempt already finished it.
	Status string
	// Attempts counts the job's starts, this one included.
	Attempts int
	// EnqueuedAt is when the job was recorded.
	EnqueuedAt time.Time
}

// Start records an attempt of the job: the image moves to processing
// (unless already further on), the job's attempts grow by one, and its
// first start time is kept. The rows are created from img when missing, so
// a task whose enqueue never committed still leaves a trace.
func (s *Store) Start(ctx context.Context, img Image, tier string) (Started, error) {
	var out Started
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO images (id, original_key, mask_key, room_type, style, seed, label, upscale, status)
			VALUES ($1, $2, nullif($3, ''), $4, $5, $6, $7, $8, 'processing')
			ON CONFLICT (id) DO UPDATE SET
			  status = CASE WHEN image_status_rank(images.status) < image_status_rank('processing') THEN 'processing' ELSE images.status END,
			  updated_at = now()
			RETURNING status`,
			img.ID, img.OriginalKey, img.MaskKey, img.RoomType, img.Style, seed(img.Seed), img.Label, img.Upscale).Scan(&out.Status)
		if err != nil {
			return fmt.Errorf("store: starting the image: %w", err)
		}
		err = tx.QueryRow(ctx, `INSERT INTO jobs (image_id, tier, attempts, started_at) VALUES ($1, $2, 1, now())
			ON CONFLICT (image_id) DO UPDATE SET attempts = jobs.attempts + 1, started_at = coalesce(jobs.started_at, now())
			RETURNING attempts, enqueued_at`, img.ID, tier).Scan(&out.Attempts, &out.EnqueuedAt)
		if err != nil {
			return fmt.Errorf("store: starting the job: %w", err)
		}
		return nil
	})
	return out, err
}

// Result is a staged image as the service answered it.
type Result struct {
	StagedKey string
	// Meta is stored as images.inference_meta.
	Meta any
	// Metrics is stored as jobs.metrics.
	Metrics any
}

// Staged records a success. It returns false when the image was already
// staged (a duplicate attempt): the first result is kept.
func (s *Store) Staged(ctx context.Context, id string, r Result) (bool, error) {
	meta, err := json.Marshal(r.Meta)
	if err != nil {
		return false, fmt.Errorf("store: encoding inference_meta: %w", err)
	}
	return s.finish(ctx, id, r.Metrics, `UPDATE images SET status = 'staged', staged_key = $2, inference_meta = $3,
		error_code = NULL, error_message = NULL, updated_at = now()
		WHERE id = $1 AND image_status_rank(status) < image_status_rank('staged')`, id, r.StagedKey, meta)
}

// Failed records a final failure with the service's error code. It returns
// false when the image was already failed or staged.
func (s *Store) Failed(ctx context.Context, id, code, message string, metrics any) (bool, error) {
	return s.finish(ctx, id, metrics, `UPDATE images SET status = 'failed', error_code = $2, error_message = $3, updated_at = now()
		WHERE id = $1 AND image_status_rank(status) < image_status_rank('failed')`, id, code, message)
}

func (s *Store) finish(ctx context.Context, id string, metrics any, update string, args ...any) (bool, error) {
	m, err := json.Marshal(metrics)
	if err != nil {
		return false, fmt.Errorf("store: encoding job metrics: %w", err)
	}
	var moved bool
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, update, args...)
		if err != nil {
			return fmt.Errorf("store: updating the image: %w", err)
		}
		if moved = tag.RowsAffected() == 1; !moved {
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE jobs SET finished_at = now(), metrics = $2 WHERE image_id = $1`, id, m); err != nil {
			return fmt.Errorf("store: updating the job: %w", err)
		}
		return nil
	})
	return moved, err
}

// Row is an image with its job, as `worker status` prints it.
type Row struct {
	ID            string          `json:"image_id"`
	OriginalKey   string          `json:"original_key"`
	MaskKey       *string         `json:"mask_key"`
	RoomType      string          `json:"room_type"`
	Style         string          `json:"style"`
	Seed          *int64          `json:"seed"`
	Label         *bool           `json:"label"`
	Upscale       bool            `json:"upscale"`
	Status        string          `json:"status"`
	StagedKey     *string         `json:"staged_key"`
	ErrorCode     *string         `json:"error_code"`
	ErrorMessage  *string         `json:"error_message"`
	InferenceMeta json.RawMessage `json:"inference_meta"`
	CreatedAt     time.Time       `json:"created_at"`
	UpdatedAt     time.Time       `json:"updated_at"`
	Job           *JobRow         `json:"job"`
}

// JobRow is the job of an image.
type JobRow struct {
	Tier       string          `json:"tier"`
	Attempts   int             `json:"attempts"`
	EnqueuedAt time.Time       `json:"enqueued_at"`
	StartedAt  *time.Time      `json:"started_at"`
	FinishedAt *time.Time      `json:"finished_at"`
	Metrics    json.RawMessage `json:"metrics"`
}

// Get returns the image id with its job.
func (s *Store) Get(ctx context.Context, id string) (Row, error) {
	var r Row
	var tier *string
	var j JobRow
	var enq *time.Time
	var attempts *int
	err := s.pool.QueryRow(ctx, `SELECT i.id, i.original_key, i.mask_key, i.room_type, i.style, i.seed, i.label, i.upscale, i.status, i.staged_key,
			i.error_code, i.error_message, i.inference_meta, i.created_at, i.updated_at,
			j.tier, j.attempts, j.enqueued_at, j.started_at, j.finished_at, j.metrics
		FROM images i LEFT JOIN jobs j ON j.image_id = i.id WHERE i.id = $1`, id).Scan(
		&r.ID, &r.OriginalKey, &r.MaskKey, &r.RoomType, &r.Style, &r.Seed, &r.Label, &r.Upscale, &r.Status, &r.StagedKey,
		&r.ErrorCode, &r.ErrorMessage, &r.InferenceMeta, &r.CreatedAt, &r.UpdatedAt,
		&tier, &attempts, &enq, &j.StartedAt, &j.FinishedAt, &j.Metrics)
	if errors.Is(err, pgx.ErrNoRows) {
		return Row{}, ErrNotFound
	}
	if err != nil {
		return Row{}, fmt.Errorf("store: reading image %s: %w", id, err)
	}
	if tier != nil {
		j.Tier, j.Attempts, j.EnqueuedAt = *tier, *attempts, *enq
		r.Job = &j
	}
	return r, nil
}

func seed(s *uint32) *int64 {
	if s == nil {
		return nil
	}
	v := int64(*s)
	return &v
}

func unseed(s *int64) *uint32 {
	if s == nil {
		return nil
	}
	v := uint32(*s)
	return &v
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
