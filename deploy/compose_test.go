package deploy_test

import (
	"context"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"sigs.k8s.io/yaml"
)

// loadCompose loads the repository's compose.yaml as docker compose would,
// schema validation included, with every profile enabled.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(root, "compose.yaml")}},
		Environment: types.Mapping{},
	}, loader.WithProfiles([]string{"*"}))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// hostPort splits a URL's or an address's host and port.
func hostPort(t *testing.T, s string) (string, string) {
	t.Helper()
	if u, err := url.Parse(s); err == nil && u.Host != "" {
		s = u.Host
	}
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return h, p
}

func TestCompose(t *testing.T) {
	r := loadReadme(t)
	p := loadCompose(t)
	svc := func(name string) types.ServiceConfig {
		t.Helper()
		s, err := p.GetService(name)
		if err != nil {
			t.Fatalf("compose.yaml: %v", err)
		}
		return s
	}
	for _, name := range []string{"vstage", "vstage-gpu", "minio", "minio-init", "prometheus", "grafana", "jaeger"} {
		svc(name)
	}

	dockerfile, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"vstage", "vstage-gpu"} {
		s := svc(name)
		env := map[string]string{}
		for k, v := range s.Environment {
			if !r.documented(k) {
				t.Errorf("%s: env %s is no setting in the README's tables", name, k)
			}
			if v != nil {
				env[k] = *v
			}
		}
		if s.Build == nil || !regexp.MustCompile(`(?m)^FROM \S+ AS `+regexp.QuoteMeta(s.Build.Target)+`$`).Match(dockerfile) {
			t.Errorf("%s: builds a Dockerfile target the Dockerfile does not have", name)
		}
		if !s.ReadOnly || !slices.Contains(s.Tmpfs, "/tmp") || !regexp.MustCompile(`^[1-9][0-9]*:[0-9]+$`).MatchString(s.User) {
			t.Errorf("%s: want a read-only root, a /tmp tmpfs and a numeric user (got %v %v %q)", name, s.ReadOnly, s.Tmpfs, s.User)
		}
		// Every endpoint vstage is given is a service of this file, on the
		// port that service listens on.
		if h, port := hostPort(t, env["S3_ENDPOINT"]); h != "minio" || port != "9000" {
			t.Errorf("%s: S3_ENDPOINT %s is not MinIO's API", name, env["S3_ENDPOINT"])
		}
		if h, port := hostPort(t, env["OTEL_EXPORTER_OTLP_ENDPOINT"]); h != "jaeger" || (port != "4317" && port != "4318") {
			t.Errorf("%s: OTEL_EXPORTER_OTLP_ENDPOINT %s is not Jaeger's OTLP port", name, env["OTEL_EXPORTER_OTLP_ENDPOINT"])
		}
		if bucket := strings.TrimPrefix(env["STORAGE_URL"], "s3://"); !strings.Contains(strings.Join(svc("minio-init").Command, " "), "local/"+strings.SplitN(bucket, "/", 2)[0]) {
			t.Errorf("%s: minio-init does not create the bucket of STORAGE_URL %s", name, env["STORAGE_URL"])
		}
		_, listen := hostPort(t, env["LISTEN_ADDR"])
		published := false
		for _, port := range s.Ports {
			published = published || (port.HostIP == "127.0.0.1" && strconv.Itoa(int(port.Target)) == listen)
		}
		if !published {
			t.Errorf("%s: the API port %s is not published on the host's loopback", name, listen)
		}
	}
	if v := svc("vstage").Environment["INFERENCE_MODE"]; v == nil || *v != "mock" || len(svc("vstage").Profiles) > 0 {
		t.Error("vstage must run mock mode without a profile")
	}

	// The gpu profile: self mode, a GPU reserved, the models read-only.
	gpu := svc("vstage-gpu")
	if !slices.Equal(gpu.Profiles, []string{"gpu"}) {
		t.Errorf("vstage-gpu profiles %v, want [gpu]", gpu.Profiles)
	}
	if v := gpu.Environment["INFERENCE_MODE"]; v == nil || *v != "self" {
		t.Error("vstage-gpu must run self mode")
	}
	reserved := false
	if d := gpu.Deploy; d != nil && d.Resources.Reservations != nil {
		for _, dev := range d.Resources.Reservations.Devices {
			reserved = reserved || (dev.Driver == "nvidia" && slices.Contains(dev.Capabilities, "gpu") && dev.Count != 0)
		}
	}
	if !reserved {
		t.Error("vstage-gpu reserves no NVIDIA GPU")
	}
	modelDir := gpu.Environment["MODEL_DIR"]
	models := false
	for _, v := range gpu.Volumes {
		models = models || (modelDir != nil && v.Target == *modelDir && v.ReadOnly)
	}
	if !models {
		t.Error("vstage-gpu: MODEL_DIR is not a read-only volume")
	}

	// Every file mounted from this repository exists, and the services
	// that read them find them where their configuration says.
	root, _ := filepath.Abs("..")
	mounted := map[string]string{}
	for _, s := range p.AllServices() {
		for _, v := range s.Volumes {
			// The models folder is the operator's own (VSTAGE_MODELS).
			if v.Type != types.VolumeTypeBind || !strings.HasPrefix(v.Source, root) || (modelDir != nil && v.Target == *modelDir) {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("%s mounts %s: %v", s.Name, v.Source, err)
			}
			if !v.ReadOnly {
				t.Errorf("%s mounts %s writable", s.Name, v.Source)
			}
			mounted[s.Name+":"+v.Target] = v.Source
		}
	}
	var prom struct {
		RuleFiles     []string `json:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	readYAML(t, mounted["prometheus:/etc/prometheus/prometheus.yml"], &prom)
	for _, f := range prom.RuleFiles {
		if src := mounted["prometheus:"+f]; filepath.Base(filepath.Dir(src)) != "prometheus" || filepath.Base(src) != "rules.yaml" {
			t.Errorf("Prometheus reads rules from %s, mounted from %q, not deploy/prometheus/rules.yaml", f, src)
		}
	}
	var targets []string
	for _, sc := range prom.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			targets = append(targets, st.Targets...)
		}
	}
	for _, want := range []string{"vstage:8080", "vstage-gpu:8080"} {
		if !slices.Contains(targets, want) {
			t.Errorf("Prometheus does not scrape %s (targets %v)", want, targets)
		}
	}
	var ds struct {
		Datasources []struct {
			UID      string `json:"uid"`
			Type     string `json:"type"`
			URL      string `json:"url"`
			JSONData struct {
				Exemplars []struct {
					DatasourceUID string `json:"datasourceUid"`
				} `json:"exemplarTraceIdDestinations"`
			} `json:"jsonData"`
		} `json:"datasources"`
	}
	readYAML(t, mounted["grafana:/etc/grafana/provisioning/datasources/prometheus.yaml"], &ds)
	urls, uids := map[string]string{}, map[string]bool{}
	for _, d := range ds.Datasources {
		urls[d.Type] = d.URL
		uids[d.UID] = true
	}
	if urls["prometheus"] != "http://prometheus:9090" || urls["jaeger"] != "http://jaeger:16686" {
		t.Errorf("Grafana's data sources are %v, want Prometheus at http://prometheus:9090 and Jaeger at http://jaeger:16686", urls)
	}
	for _, d := range ds.Datasources {
		for _, e := range d.JSONData.Exemplars {
			if !uids[e.DatasourceUID] {
				t.Errorf("exemplars of %s link to data source %q, which is not provisioned", d.UID, e.DatasourceUID)
			}
		}
	}
	var dash struct {
		Providers []struct {
			Options struct {
				Path string `json:"path"`
			} `json:"options"`
		} `json:"providers"`
	}
	readYAML(t, mounted["grafana:/etc/grafana/provisioning/dashboards/vstage.yaml"], &dash)
	if len(dash.Providers) != 1 {
		t.Fatalf("Grafana dashboard providers: %+v", dash.Providers)
	}
	canary := mounted["grafana:"+dash.Providers[0].Options.Path+"/vstage-canary.json"]
	if canary != filepath.Join(root, "deploy", "grafana", "vstage-canary.json") {
		t.Errorf("Grafana's dashboard folder holds %q, not deploy/grafana/vstage-canary.json", canary)
	}
	if sample := mounted["minio-init:/sample/empty_living_room.jpg"]; sample == "" {
		t.Error("minio-init does not mount the sample photo")
	}
}

func readYAML(t *testing.T, file string, into any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}
