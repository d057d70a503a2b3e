// Package charts holds Meridian's Helm chart (charts/meridian) and its tests:
// helm lint and helm template with the default values and with every option
// on, schema refusals, and the rendered objects decoded into typed
// Kubernetes objects and checked one by one. Its one Go API is the chart
// itself, embedded (Meridian), which the lab installs; `make chart-test`
// runs the tests with bin/helm.
package charts
