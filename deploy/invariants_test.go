package deploy_test

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestInvariantsCatchBrokenManifests breaks the GPU overlay's build one way
// at a time and expects the invariants to name each break, so that a check
// that silently passes everything fails here.
func TestInvariantsCatchBrokenManifests(t *testing.T) {
	r := loadReadme(t)
	routes := sidecarRoutes(t)
	gpu := overlays[0]
	if problems := build(t, gpu.dir).check(t, r, routes, gpu); len(problems) > 0 {
		t.Fatalf("the unbroken build has problems: %v", problems)
	}
	container := func(o objects) *corev1.Container { return &o.deployments[0].Spec.Template.Spec.Containers[0] }
	setEnv := func(o objects, name, value string) {
		c := container(o)
		for i := range c.Env {
			if c.Env[i].Name == name {
				c.Env[i].Value, c.Env[i].ValueFrom = value, nil
				return
			}
		}
		c.Env = append(c.Env, corev1.EnvVar{Name: name, Value: value})
	}
	for _, tc := range []struct {
		want   string
		mutate func(objects)
	}{
		{"no setting in the README", func(o objects) { setEnv(o, "ENGINE_START_TIMEOUTS", "1m") }},
		{"want one from", func(o objects) { container(o).Image = "registry.example.com/vstage:1" }},
		{"from a Secret", func(o objects) { setEnv(o, "ADMIN_TOKEN", "plain") }},
		{"ServiceAccount's role", func(o objects) { setEnv(o, "AWS_SECRET_ACCESS_KEY", "x") }},
		{"does not cover", func(o objects) { setEnv(o, "SHUTDOWN_TIMEOUT", "2m") }},
		{"not a minute above ENGINE_START_TIMEOUT", func(o objects) { setEnv(o, "ENGINE_START_TIMEOUT", "12m") }},
		{"serves no GET", func(o objects) { container(o).ReadinessProbe.HTTPGet.Path = "/ready" }},
		{"not the API listener's", func(o objects) { container(o).LivenessProbe.HTTPGet.Port = intstr.FromInt32(9091) }},
		{"does not match the http port", func(o objects) { setEnv(o, "LISTEN_ADDR", ":8000") }},
		{"no nvidia.com/gpu limit", func(o objects) { delete(container(o).Resources.Limits, "nvidia.com/gpu") }},
		{"Guaranteed QoS", func(o objects) { container(o).Resources.Requests[corev1.ResourceMemory] = resource.MustParse("1Gi") }},
		{"node selector", func(o objects) { o.deployments[0].Spec.Template.Spec.Tolerations = nil }},
		{"not read-only", func(o objects) {
			for i := range container(o).VolumeMounts {
				container(o).VolumeMounts[i].ReadOnly = false
			}
		}},
		{"maxSurge: 0", func(o objects) {
			s := intstr.FromInt32(1)
			o.deployments[0].Spec.Strategy.RollingUpdate.MaxSurge = &s
		}},
		{"root file system is writable", func(o objects) { *container(o).SecurityContext.ReadOnlyRootFilesystem = false }},
		{"non-root user", func(o objects) { *o.deployments[0].Spec.Template.Spec.SecurityContext.RunAsUser = 0 }},
		{"drop ALL", func(o objects) { container(o).SecurityContext.Capabilities.Drop = nil }},
		{"RuntimeDefault", func(o objects) { o.deployments[0].Spec.Template.Spec.SecurityContext.SeccompProfile = nil }},
		{"all required", func(o objects) { o.configMaps[0].Data["rollout.json"] = `{"enabled":true,"mode":"self"}` }},
		{"is not built", func(o objects) {
			o.configMaps[0].Data["rollout.json"] = `{"enabled":true,"mode":"managed","canary_percent":5}`
		}},
		{"the admin port is open to", func(o objects) {
			o.networkPolicies[0].Spec.Ingress[1].From[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] = "vstage-worker"
		}},
		{"does not expose", func(o objects) { o.services[0].Spec.Ports[0].TargetPort = intstr.FromString("api") }},
		{"selects no vstage pod", func(o objects) { o.pdbs[0].Spec.Selector.MatchLabels = map[string]string{"app": "other"} }},
		{"scale to zero", func(o objects) { *o.scaledObjects[0].Spec.MinReplicaCount = 1 }},
		{"no README metrics table lists", func(o objects) {
			o.scaledObjects[0].Spec.Triggers[1].Metadata["query"] = "sum(vstage_admission_queue_lenght)"
		}},
	} {
		o := build(t, gpu.dir)
		tc.mutate(o)
		problems := o.check(t, r, routes, gpu)
		if !strings.Contains(strings.Join(problems, "\n"), tc.want) {
			t.Errorf("a break that should report %q reported %q", tc.want, problems)
		}
	}
}
