package deploy_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// objects is one kustomize build, every object decoded strictly into its Go
// type: a field the type does not have (a typo, a field of another API
// version) fails the decode.
type objects struct {
	deployments     []*appsv1.Deployment
	services        []*corev1.Service
	serviceAccounts []*corev1.ServiceAccount
	configMaps      []*corev1.ConfigMap
	claims          []*corev1.PersistentVolumeClaim
	pdbs            []*policyv1.PodDisruptionBudget
	networkPolicies []*networkingv1.NetworkPolicy
	scaledObjects   []*kedav1alpha1.ScaledObject
	serviceMonitors []*monitoringv1.ServiceMonitor
	prometheusRules []*monitoringv1.PrometheusRule
}

func build(t *testing.T, dir string) objects {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var o objects
	for _, r := range m.Resources() {
		data, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		if err := o.add(r.GetApiVersion(), r.GetKind(), data); err != nil {
			t.Errorf("%s: %s %s: %v", dir, r.GetKind(), r.GetName(), err)
		}
	}
	return o
}

// add decodes one manifest into the type its apiVersion and kind name.
func (o *objects) add(apiVersion, kind string, data []byte) error {
	var into any
	switch apiVersion + " " + kind {
	case "apps/v1 Deployment":
		into = appendNew(&o.deployments)
	case "v1 Service":
		into = appendNew(&o.services)
	case "v1 ServiceAccount":
		into = appendNew(&o.serviceAccounts)
	case "v1 ConfigMap":
		into = appendNew(&o.configMaps)
	case "v1 PersistentVolumeClaim":
		into = appendNew(&o.claims)
	case "policy/v1 PodDisruptionBudget":
		into = appendNew(&o.pdbs)
	case "networking.k8s.io/v1 NetworkPolicy":
		into = appendNew(&o.networkPolicies)
	case "keda.sh/v1alpha1 ScaledObject":
		into = appendNew(&o.scaledObjects)
	case "monitoring.coreos.com/v1 ServiceMonitor":
		into = appendNew(&o.serviceMonitors)
	case "monitoring.coreos.com/v1 PrometheusRule":
		into = appendNew(&o.prometheusRules)
	default:
		return fmt.Errorf("no Go type for %s %s in this test", apiVersion, kind)
	}
	return decodeStrict(data, into)
}

// appendNew appends a new zero T to list and returns it, to decode into.
func appendNew[T any](list *[]*T) *T {
	v := new(T)
	*list = append(*list, v)
	return v
}

// decodeStrict decodes YAML into a Kubernetes Go type as the API server
// would in strict mode: field names matched case-sensitively (encoding/json
// alone would take runAsNonroot for runAsNonRoot), unknown and repeated
// fields refused.
func decodeStrict(data []byte, into any) error {
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, into, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// counts lists how many objects of each kind a build holds, for messages.
func (o objects) counts() map[string]int {
	return map[string]int{
		"Deployment": len(o.deployments), "Service": len(o.services),
		"ServiceAccount": len(o.serviceAccounts), "ConfigMap": len(o.configMaps),
		"PodDisruptionBudget": len(o.pdbs), "NetworkPolicy": len(o.networkPolicies),
		"ScaledObject": len(o.scaledObjects), "ServiceMonitor": len(o.serviceMonitors),
		"PrometheusRule": len(o.prometheusRules),
	}
}

// overlay is what each overlay must be, beyond what every one must be.
type overlay struct {
	dir   string
	mode  string
	gpu   bool
	image string // the image's repository, without the tag
}

var overlays = []overlay{
	{dir: "kubernetes/overlays/gpu", mode: "self", gpu: true, image: "registry.example.com/vstage-gpu"},
	{dir: "kubernetes/overlays/managed", mode: "managed", image: "registry.example.com/vstage"},
}

func TestOverlays(t *testing.T) {
	r := loadReadme(t)
	routes := sidecarRoutes(t)
	for _, ov := range overlays {
		t.Run(path.Base(ov.dir), func(t *testing.T) {
			o := build(t, ov.dir)
			for kind, n := range o.counts() {
				if n != 1 {
					t.Errorf("%d objects of kind %s, want 1", n, kind)
				}
			}
			if t.Failed() {
				t.FailNow()
			}
			for _, p := range o.check(t, r, routes, ov) {
				t.Error(p)
			}
		})
	}
}

// check returns every broken invariant of one overlay's build.
func (o objects) check(t *testing.T, r readme, routes map[string]bool, ov overlay) []string {
	t.Helper()
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	d := o.deployments[0]
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		bad("%d containers, want the sidecar alone (it starts the engine itself)", len(pod.Containers))
		return problems
	}
	c := pod.Containers[0]
	// Self mode needs the gpu image (the engine's environment); the sidecar
	// image would fail at start.
	if repo, _, _ := strings.Cut(c.Image, ":"); repo != ov.image {
		bad("image %s, want one from %s", c.Image, ov.image)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if !r.documented(e.Name) {
			bad("env %s is no setting in the README's tables", e.Name)
		}
		if e.ValueFrom == nil {
			env[e.Name] = e.Value
		}
		if strings.HasPrefix(e.Name, "AWS_") && e.Name != "AWS_REGION" {
			bad("env %s: the pod's AWS credentials come from its ServiceAccount's role", e.Name)
		}
		secretish := strings.Contains(e.Name, "TOKEN") && !strings.HasSuffix(e.Name, "_FILE")
		if secretish && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
			bad("env %s must come from a Secret", e.Name)
		}
	}
	if env["INFERENCE_MODE"] != ov.mode {
		bad("INFERENCE_MODE=%q, want %q", env["INFERENCE_MODE"], ov.mode)
	}

	// Ports and probes: the probes ask the sidecar's own routes on its
	// listener's port.
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	_, listen, _ := strings.Cut(env["LISTEN_ADDR"], ":")
	if listen == "" || strconv.Itoa(int(ports["http"])) != listen {
		bad("LISTEN_ADDR=%q does not match the http port %d", env["LISTEN_ADDR"], ports["http"])
	}
	_, admin, _ := strings.Cut(env["ADMIN_ADDR"], ":")
	if admin != "" && strconv.Itoa(int(ports["admin"])) != admin {
		bad("ADMIN_ADDR=%q does not match the admin port %d", env["ADMIN_ADDR"], ports["admin"])
	}
	probes := map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe}
	for name, p := range probes {
		switch {
		case p == nil || p.HTTPGet == nil:
			bad("%s probe: none, or not HTTP", name)
		case !routes[p.HTTPGet.Path]:
			bad("%s probe: the sidecar serves no GET %s", name, p.HTTPGet.Path)
		case p.HTTPGet.Port.String() != "http" && p.HTTPGet.Port.IntValue() != int(ports["http"]):
			bad("%s probe: port %s is not the API listener's", name, p.HTTPGet.Port.String())
		}
	}
	if p := c.LivenessProbe; p != nil && p.HTTPGet != nil && p.HTTPGet.Path != "/healthz" {
		bad("liveness probe on %s: only /healthz stays 200 while the engine restarts", p.HTTPGet.Path)
	}
	if p := c.StartupProbe; p != nil && env["INFERENCE_MODE"] == "self" {
		budget := time.Duration(p.InitialDelaySeconds+p.PeriodSeconds*p.FailureThreshold) * time.Second
		if start := r.duration(t, env, "ENGINE_START_TIMEOUT"); budget < start+time.Minute {
			bad("startup probe budget %v is not a minute above ENGINE_START_TIMEOUT %v", budget, start)
		}
	}

	// Shutdown: the kubelet's SIGKILL comes after the whole drain.
	drain := r.duration(t, env, "DRAIN_DELAY") + r.duration(t, env, "SHUTDOWN_TIMEOUT") + r.duration(t, env, "ENGINE_STOP_GRACE")
	if g := pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= drain {
		bad("terminationGracePeriodSeconds %v does not cover DRAIN_DELAY + SHUTDOWN_TIMEOUT + ENGINE_STOP_GRACE = %v", g, drain)
	}

	// Guaranteed QoS, and the GPU.
	for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, lim := c.Resources.Requests[res], c.Resources.Limits[res]
		if lim.IsZero() || req.Cmp(lim) != 0 {
			bad("%s: request %s and limit %s must be equal and set (Guaranteed QoS)", res, req.String(), lim.String())
		}
	}
	gpus := c.Resources.Limits["nvidia.com/gpu"]
	if ov.gpu {
		if gpus.Value() < 1 {
			bad("no nvidia.com/gpu limit")
		}
		if len(pod.NodeSelector) == 0 || len(pod.Tolerations) == 0 {
			bad("a GPU pod needs a node selector and a toleration for the GPU pool")
		}
	} else if !gpus.IsZero() {
		bad("a CPU overlay asks for %s GPUs", gpus.String())
	}

	// The models: mounted read-only from a read-only claim.
	if dir := env["MODEL_DIR"]; dir != "" {
		found := false
		for _, m := range c.VolumeMounts {
			if m.MountPath != dir {
				continue
			}
			found = true
			if !m.ReadOnly {
				bad("the models mount %s is not read-only", dir)
			}
			for _, v := range pod.Volumes {
				if v.Name == m.Name && v.PersistentVolumeClaim != nil && !v.PersistentVolumeClaim.ReadOnly {
					bad("the models claim %s is not mounted read-only", v.PersistentVolumeClaim.ClaimName)
				}
			}
		}
		if !found {
			bad("MODEL_DIR=%s is no volume mount", dir)
		}
	} else if ov.mode == "self" {
		bad("self mode without MODEL_DIR")
	}

	// Rollout: one pod at a time, without a spare GPU.
	if ru := d.Spec.Strategy.RollingUpdate; ru == nil || ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 0 {
		bad("rolling update needs maxSurge: 0 (no spare GPU for a surge pod)")
	}
	if d.Spec.Replicas != nil {
		bad("replicas is set; the ScaledObject owns the count")
	}

	problems = append(problems, checkSecurity(pod, c)...)
	tmp := false
	for _, m := range c.VolumeMounts {
		tmp = tmp || m.MountPath == "/tmp"
	}
	if !tmp {
		bad("no writable /tmp for the engine's socket folder")
	}
	problems = append(problems, o.checkRolloutFile(env, c, pod)...)
	problems = append(problems, o.checkWiring(d, ports)...)
	problems = append(problems, o.checkScaling(r, ov)...)
	return problems
}

func checkSecurity(pod corev1.PodSpec, c corev1.Container) []string {
	var problems []string
	ps, cs := pod.SecurityContext, c.SecurityContext
	if ps == nil || cs == nil {
		return []string{"pod or container securityContext missing"}
	}
	if ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.RunAsUser == nil || *ps.RunAsUser == 0 {
		problems = append(problems, "the pod must run as a numeric non-root user (runAsNonRoot, runAsUser)")
	}
	if ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		problems = append(problems, "seccomp profile is not RuntimeDefault")
	}
	if cs.ReadOnlyRootFilesystem == nil || !*cs.ReadOnlyRootFilesystem {
		problems = append(problems, "the root file system is writable")
	}
	if cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation {
		problems = append(problems, "privilege escalation is allowed")
	}
	if cs.Capabilities == nil || !reflect.DeepEqual(cs.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(cs.Capabilities.Add) > 0 {
		problems = append(problems, "capabilities: drop ALL and add none")
	}
	return problems
}

// checkRolloutFile follows ROLLOUT_FILE to the ConfigMap key it is read
// from and checks that the sidecar would accept it.
func (o objects) checkRolloutFile(env map[string]string, c corev1.Container, pod corev1.PodSpec) []string {
	file := env["ROLLOUT_FILE"]
	if file == "" {
		return []string{"no ROLLOUT_FILE: the kill switch would not survive a restart"}
	}
	for _, m := range c.VolumeMounts {
		if path.Dir(file) != m.MountPath {
			continue
		}
		if m.SubPath != "" {
			return []string{"the rollout ConfigMap is mounted with subPath, which the kubelet never updates"}
		}
		for _, v := range pod.Volumes {
			if v.Name != m.Name || v.ConfigMap == nil {
				continue
			}
			for _, cm := range o.configMaps {
				if cm.Name != v.ConfigMap.Name {
					continue
				}
				data, ok := cm.Data[path.Base(file)]
				if !ok {
					return []string{fmt.Sprintf("ConfigMap %s has no key %s", cm.Name, path.Base(file))}
				}
				var s struct {
					Enabled       *bool   `json:"enabled"`
					Mode          *string `json:"mode"`
					CanaryPercent *int    `json:"canary_percent"`
				}
				dec := json.NewDecoder(strings.NewReader(data))
				dec.DisallowUnknownFields()
				if err := dec.Decode(&s); err != nil || s.Enabled == nil || s.Mode == nil || s.CanaryPercent == nil {
					return []string{fmt.Sprintf("rollout file %q: enabled, mode and canary_percent are all required (%v)", data, err)}
				}
				if *s.Mode != "mock" && *s.Mode != env["INFERENCE_MODE"] {
					return []string{fmt.Sprintf("rollout file mode %q is not built with INFERENCE_MODE=%s", *s.Mode, env["INFERENCE_MODE"])}
				}
				return nil
			}
			return []string{fmt.Sprintf("ConfigMap %s is not in the build", v.ConfigMap.Name)}
		}
	}
	return []string{fmt.Sprintf("ROLLOUT_FILE %s is on no ConfigMap volume", file)}
}

func selects(sel map[string]string, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// checkWiring checks that the objects name each other correctly.
func (o objects) checkWiring(d *appsv1.Deployment, ports map[string]int32) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	labels := d.Spec.Template.Labels
	pod := d.Spec.Template.Spec

	if sa := o.serviceAccounts[0]; pod.ServiceAccountName != sa.Name {
		bad("the pod runs as %q, the ServiceAccount is %q", pod.ServiceAccountName, sa.Name)
	}
	svc := o.services[0]
	if !selects(svc.Spec.Selector, labels) {
		bad("the Service selects no vstage pod")
	}
	svcPorts := map[string]bool{}
	for _, p := range svc.Spec.Ports {
		svcPorts[p.Name] = true
		if p.TargetPort.Type == intstr.String && ports[p.TargetPort.StrVal] == 0 {
			bad("Service port %s targets %s, which the container does not expose", p.Name, p.TargetPort.StrVal)
		}
		if p.Name == "admin" {
			bad("the admin port is on the Service; the rollout state is per pod")
		}
	}
	if pdb := o.pdbs[0]; pdb.Spec.Selector == nil || !selects(pdb.Spec.Selector.MatchLabels, labels) {
		bad("the PodDisruptionBudget selects no vstage pod")
	}
	sm := o.serviceMonitors[0]
	if sm.Spec.Selector.MatchLabels == nil || !selects(sm.Spec.Selector.MatchLabels, svc.Labels) {
		bad("the ServiceMonitor selects no vstage Service")
	}
	for _, e := range sm.Spec.Endpoints {
		if !svcPorts[e.Port] || e.Path != "/metrics" {
			bad("ServiceMonitor endpoint %s%s: not the Service's port and /metrics", e.Port, e.Path)
		}
	}

	// NetworkPolicy: the API port from the workers and Prometheus, the admin
	// port from operators only.
	np := o.networkPolicies[0]
	if !selects(np.Spec.PodSelector.MatchLabels, labels) {
		bad("the NetworkPolicy selects no vstage pod")
	}
	sources := map[string][]string{}
	for _, rule := range np.Spec.Ingress {
		if len(rule.From) == 0 {
			bad("an ingress rule admits every source")
		}
		for _, p := range rule.Ports {
			if p.Port == nil {
				bad("an ingress rule admits every port")
				continue
			}
			if p.Port.Type == intstr.String && ports[p.Port.StrVal] == 0 {
				bad("NetworkPolicy names port %s, which the container does not expose", p.Port.StrVal)
			}
			for _, f := range rule.From {
				ns := "(any namespace)"
				if f.NamespaceSelector != nil {
					ns = f.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"]
				}
				sources[p.Port.String()] = append(sources[p.Port.String()], ns)
			}
		}
	}
	if got, want := sources["admin"], []string{"vstage-operators"}; !reflect.DeepEqual(got, want) {
		bad("the admin port is open to %v, want %v", got, want)
	}
	if got, want := sources["http"], []string{"vstage-worker", "monitoring"}; !reflect.DeepEqual(got, want) {
		bad("the API port is open to %v, want %v", got, want)
	}
	return problems
}

// checkScaling checks the ScaledObject: its target, scale-to-zero on the
// GPU, and that its queries name metrics the service documents.
func (o objects) checkScaling(r readme, ov overlay) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	so := o.scaledObjects[0]
	d := o.deployments[0]
	if ref := so.Spec.ScaleTargetRef; ref == nil || ref.Name != d.Name || (ref.Kind != "" && ref.Kind != "Deployment") {
		bad("the ScaledObject does not scale the Deployment %s", d.Name)
	}
	if so.Spec.CooldownPeriod == nil {
		bad("no cooldownPeriod")
	}
	if ov.gpu && (so.Spec.MinReplicaCount == nil || *so.Spec.MinReplicaCount != 0) {
		bad("the GPU overlay does not scale to zero (minReplicaCount 0)")
	}
	for _, tr := range so.Spec.Triggers {
		if tr.Type != "prometheus" {
			continue
		}
		q := tr.Metadata["query"]
		if q == "" || tr.Metadata["threshold"] == "" || tr.Metadata["serverAddress"] == "" {
			bad("trigger %s: query, threshold and serverAddress are required", tr.Name)
		}
		for _, m := range metricsIn(q) {
			if !r.metrics[m] {
				bad("trigger %s names %s, which no README metrics table lists", tr.Name, m)
			}
		}
		if !ov.gpu && regexp.MustCompile(`vstage_admission_`).MatchString(q) {
			bad("trigger %s reads admission metrics, which exist only in self mode", tr.Name)
		}
	}
	return problems
}

// sidecarRoutes returns the paths the sidecar's router answers GET on.
func sidecarRoutes(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "internal", "api", "api.go"))
	if err != nil {
		t.Fatal(err)
	}
	routes := map[string]bool{}
	for _, m := range regexp.MustCompile(`\.(?:Get\(|Method\(http\.MethodGet,\s*)"(/[^"]*)"`).FindAllStringSubmatch(string(src), -1) {
		routes[m[1]] = true
	}
	if !routes["/healthz"] || !routes["/readyz"] {
		t.Fatalf("read routes %v from internal/api/api.go; has its form changed?", routes)
	}
	return routes
}

// TestPrometheusRuleMatchesRules compares the PrometheusRule in the build
// with deploy/prometheus/rules.yaml, rule by rule (the generator's bytes
// are compared in package generate).
func TestPrometheusRuleMatchesRules(t *testing.T) {
	o := build(t, "kubernetes/overlays/gpu")
	data, err := os.ReadFile("prometheus/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []monitoringv1.RuleGroup `json:"groups"`
	}
	if err := decodeStrict(data, &file); err != nil {
		t.Fatal(err)
	}
	if len(o.prometheusRules) != 1 {
		t.Fatalf("%d PrometheusRules", len(o.prometheusRules))
	}
	if got := o.prometheusRules[0].Spec.Groups; !reflect.DeepEqual(got, file.Groups) {
		t.Errorf("the PrometheusRule differs from deploy/prometheus/rules.yaml; run make deploy-generate")
	}
}

// TestWorker checks the queue worker's kustomization.
func TestWorker(t *testing.T) {
	r := loadReadme(t)
	o := build(t, "kubernetes/worker")
	if len(o.deployments) != 1 {
		t.Fatalf("%d Deployments", len(o.deployments))
	}
	pod := o.deployments[0].Spec.Template.Spec
	for _, c := range append(pod.InitContainers, pod.Containers...) {
		for _, p := range checkSecurity(pod, c) {
			t.Errorf("%s: %s", c.Name, p)
		}
		for _, e := range c.Env {
			if !r.documented(e.Name) {
				t.Errorf("%s: env %s is no setting in the README's tables", c.Name, e.Name)
			}
		}
	}
}
