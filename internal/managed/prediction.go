package managed

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/vstage/vstage/client/backoff"
	"github.com/vstage/vstage/internal/backend"
	"github.com/vstage/vstage/internal/imagecheck"
)

// The prediction statuses of the provider's API.
const (
	statusStarting   = "starting"
	statusProcessing = "processing"
	statusSucceeded  = "succeeded"
	statusFailed     = "failed"
	statusCanceled   = "canceled"
)

// maxPredictionBytes caps a prediction's JSON; it echoes the inputs, whose
// images may come back inline.
const maxPredictionBytes = 64 << 20

type prediction struct {
	ID     string          `json:"id"`
	Status string          `json:"status"`
	Output json.RawMessage `json:"output"`
	Error  json.RawMessage `json:"error"`
	URLs   struct {
		Get string `json:"get"`
	} `json:"urls"`
	// Metrics.PredictTime is the run time, in seconds, the provider bills.
	Metrics struct {
		PredictTime float64 `json:"predict_time"`
	} `json:"metrics"`
}

// billed is the run time the provider reports for p; zero when it reports
// none, or a value no run can have.
func (p prediction) billed() time.Duration {
	t := p.Metrics.PredictTime
	if !(t > 0 && t < 86400) {
		return 0
	}
	return time.Duration(t * float64(time.Second))
}

// predictionError is a prediction that ended without an output.
type predictionError struct {
	status string
	text   string // sanitized
}

func (e *predictionError) Error() string { return "prediction " + e.status + detailSuffix(e.text) }

func (e *predictionError) message() string {
	if e.status == statusCanceled {
		return "the managed provider canceled the prediction"
	}
	if e.text == "" {
		return "the managed provider's prediction failed"
	}
	return "the managed provider's prediction failed: " + e.text
}

// errMalformed marks an answer that does not follow the provider's API.
var errMalformed = errors.New("malformed provider answer")

// run creates the prediction, follows it to its end and downloads the
// output.
func (b *Backend) run(ctx context.Context, job backend.Job) (backend.Result, error) {
	p, err := b.create(ctx, job)
	if err != nil {
		return backend.Result{}, err
	}
	for !terminal(p.Status) {
		if err := backoff.Sleep(ctx, b.opts.PollInterval); err != nil {
			return backend.Result{}, err
		}
		if p, err = b.poll(ctx, p); err != nil {
			return backend.Result{}, err
		}
	}
	if p.Status != statusSucceeded {
		return backend.Result{}, &predictionError{status: p.Status, text: b.sanitize(errorText(p.Error))}
	}
	data, err := b.output(ctx, p.Output)
	if err != nil {
		return backend.Result{}, err
	}
	info, err := imagecheck.Inspect(data, b.opts.MaxOutputPixels)
	if err != nil {
		return backend.Result{}, fmt.Errorf("%w: the output is not an accepted image: %w", errMalformed, err)
	}
	w, h := info.OrientedSize()
	res := backend.Result{
		Image: data, ContentType: "image/" + string(info.Format), Width: w, Height: h,
		ModelRev: b.opts.ModelRev, BilledTime: p.billed(),
	}
	if job.UpscaleLongSide > 0 {
		return b.upscale(res, job.UpscaleLongSide)
	}
	return res, nil
}

// upscale resamples the provider's image to the long side of an upscaled
// job: the provider has no upscaler of ours, so the answer says so
// (backend.WarningUpscaleResampled) rather than pass a resampling off as
// a refinement.
func (b *Backend) upscale(res backend.Result, longSide int) (backend.Result, error) {
	r, err := imagecheck.Normalize(res.Image, imagecheck.NormalizeOptions{MaxPixels: b.opts.MaxOutputPixels, UpscaleLongSide: longSide})
	if err != nil {
		return backend.Result{}, fmt.Errorf("%w: the output could not be upscaled: %w", errMalformed, err)
	}
	res.Image, res.ContentType, res.Width, res.Height = r.Data, "image/jpeg", r.Width, r.Height
	res.Warnings = append(res.Warnings, backend.WarningUpscaleResampled)
	return res, nil
}

func (b *Backend) create(ctx context.Context, job backend.Job) (prediction, error) {
	input := map[string]any{
		"image":           dataURI(job.Image),
		"prompt":          job.Prompt,
		"negative_prompt": job.NegativePrompt,
		"seed":            job.Seed,
		"prompt_strength": job.Strength,
		"guidance_scale":  job.GuidanceScale,
		"condition_scale": job.ControlNetConditioningScale,
	}
	if job.Mask != nil {
		input["mask"] = dataURI(job.Mask)
	}
	if b.opts.Steps > 0 {
		input["num_inference_steps"] = b.opts.Steps
	}
	body, err := json.Marshal(map[string]any{"version": b.opts.Version, "input": input})
	if err != nil {
		return prediction{}, fmt.Errorf("%w: encoding the inputs: %w", errMalformed, err)
	}
	h := http.Header{"Content-Type": {"application/json"}}
	// The job id is the idempotency key: a create retried after a lost
	// answer finds the prediction the first attempt started.
	h.Set("Idempotency-Key", job.ID)
	timeout := b.opts.CallTimeout
	if wait := b.waitSeconds(ctx); wait > 0 {
		h.Set("Prefer", fmt.Sprintf("wait=%d", wait))
		timeout += time.Duration(wait) * time.Second
	}
	data, err := b.do(ctx, call{op: "create", method: http.MethodPost, url: b.endpoint("/v1/predictions"),
		body: body, header: h, auth: true, limit: maxPredictionBytes, timeout: timeout})
	if err != nil {
		return prediction{}, err
	}
	return decodePrediction(data)
}

// waitSeconds is the Prefer: wait value: the configured wait, shortened to
// leave a second of the deadline for the answer itself.
func (b *Backend) waitSeconds(ctx context.Context) int {
	wait := b.opts.Wait
	if wait <= 0 {
		return 0
	}
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)-time.Second)
	}
	return int(wait / time.Second)
}

func (b *Backend) poll(ctx context.Context, p prediction) (prediction, error) {
	target := b.endpoint("/v1/predictions/" + url.PathEscape(p.ID))
	// The provider's own link is used only on its own origin, so that the
	// token is never sent elsewhere.
	if p.URLs.Get != "" && b.sameOrigin(p.URLs.Get) {
		target = p.URLs.Get
	}
	data, err := b.do(ctx, call{op: "poll", method: http.MethodGet, url: target, auth: true,
		limit: maxPredictionBytes, timeout: b.opts.CallTimeout})
	if err != nil {
		return prediction{}, err
	}
	next, err := decodePrediction(data)
	if err != nil {
		return prediction{}, err
	}
	if next.ID != p.ID {
		return prediction{}, fmt.Errorf("%w: polled prediction %q, got %q", errMalformed, p.ID, next.ID)
	}
	return next, nil
}

func decodePrediction(data []byte) (prediction, error) {
	var p prediction
	if err := json.Unmarshal(data, &p); err != nil {
		return prediction{}, fmt.Errorf("%w: %w", errMalformed, err)
	}
	switch p.Status {
	case statusStarting, statusProcessing, statusSucceeded, statusFailed, statusCanceled:
	default:
		return prediction{}, fmt.Errorf("%w: unknown prediction status %.40q", errMalformed, p.Status)
	}
	if p.ID == "" && !terminal(p.Status) {
		return prediction{}, fmt.Errorf("%w: a running prediction without an id", errMalformed)
	}
	return p, nil
}

func terminal(status string) bool {
	return status == statusSucceeded || status == statusFailed || status == statusCanceled
}

// output returns the bytes of the prediction's output: a URL to download,
// or an inline data URI. A list of outputs (models that can return several
// images) yields its first.
func (b *Backend) output(ctx context.Context, raw json.RawMessage) ([]byte, error) {
	var one string
	if err := json.Unmarshal(raw, &one); err != nil {
		var many []string
		if err := json.Unmarshal(raw, &many); err != nil || len(many) == 0 {
			return nil, fmt.Errorf("%w: the output is neither a URL nor a list of URLs", errMalformed)
		}
		one = many[0]
	}
	if rest, ok := strings.CutPrefix(one, "data:"); ok {
		return b.decodeDataURI(rest)
	}
	u, err := url.Parse(one)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("%w: the output is not an http(s) URL", errMalformed)
	}
	return b.do(ctx, call{op: "download", method: http.MethodGet, url: one, auth: b.sameOrigin(one),
		limit: b.opts.MaxOutputBytes, timeout: b.opts.CallTimeout})
}

func (b *Backend) decodeDataURI(rest string) ([]byte, error) {
	meta, payload, ok := strings.Cut(rest, ",")
	if !ok || !strings.HasSuffix(meta, ";base64") {
		return nil, fmt.Errorf("%w: the output data URI is not base64", errMalformed)
	}
	if int64(base64.StdEncoding.DecodedLen(len(payload))) > b.opts.MaxOutputBytes {
		return nil, &callError{op: "download", tooLarge: true}
	}
	data, err := base64.StdEncoding.DecodeString(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: the output data URI: %w", errMalformed, err)
	}
	return data, nil
}

func (b *Backend) endpoint(path string) string { return b.base.String() + path }

func (b *Backend) sameOrigin(raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && u.Scheme == b.base.Scheme && u.Host == b.base.Host
}

// dataURI inlines an image; the type is sniffed, since the provider's
// model decodes by it.
func dataURI(img []byte) string {
	return "data:" + http.DetectContentType(img) + ";base64," + base64.StdEncoding.EncodeToString(img)
}

// errorText extracts the provider's error, which is usually a string but
// may be any JSON value.
func errorText(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}
