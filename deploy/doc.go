// Package deploy holds no code that ships: its tests build the Kubernetes
// overlays and the compose file under this folder and check them against
// the service's documented settings, routes and metrics. It is a module of
// its own so that the Kubernetes, KEDA and compose libraries the tests
// need stay out of the sidecar's dependencies.
package deploy
