// Package charts holds Meridian's Helm chart (charts/meridian) and its tests:
// helm lint and helm template with the default values and with every option
// on, schema refusals, and the rendered objects decoded into typed
// Kubernetes objects and checked one by one. It has no Go API; `make
// chart-test` runs it with bin/helm.
package charts
