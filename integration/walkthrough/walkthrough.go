// Package walkthrough runs the seed's first steps on a running lab the way a
// user would type them, and shows what Meridian did: each node's routes,
// which pods reach which, and the web Service reached by name through
// CoreDNS and Meridian's Service NAT, with the replicas that answered.
package walkthrough

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meridian-net/meridian/integration/lab"
)

// Options says where the binaries are and what to deploy.
type Options struct {
	BinDir   string
	Replicas int
	Out      io.Writer
}

// Run deploys web (nginx, N replicas), waits for it, prints routes and a
// pod-to-pod reachability matrix. It returns an error when a pod cannot
// reach another, so `make lab` fails loudly instead of printing a red table
// nobody reads.
func Run(ctx context.Context, l *lab.Lab, opts Options) error {
	if opts.Replicas == 0 {
		opts.Replicas = 3
	}
	out := opts.Out
	kubectl := func(args ...string) error {
		fmt.Fprintf(out, "\n$ kubectl %s\n", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, filepath.Join(opts.BinDir, "kubectl"), args...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+l.Kubeconfig())
		cmd.Stdout, cmd.Stderr = out, out
		return cmd.Run()
	}
	client, err := l.Client()
	if err != nil {
		return err
	}
	// The seed's first check: is the cluster's CNI running? One Meridian
	// pod per node, Ready, installed by helm from charts/meridian.
	fmt.Fprintf(out, "\n# the network: Meridian's DaemonSet (helm install of charts/meridian), one pod per node\n")
	if err := kubectl("get", "pods", "-n", "kube-system", "-l", "app.kubernetes.io/name=meridian", "-o", "wide"); err != nil {
		return err
	}
	if _, err := client.AppsV1().Deployments("default").Get(ctx, "web", metav1.GetOptions{}); err != nil {
		if err := kubectl("create", "deployment", "web", "--image=nginx", fmt.Sprintf("--replicas=%d", opts.Replicas)); err != nil {
			return fmt.Errorf("create deployment web: %w", err)
		}
	}
	if err := kubectl("rollout", "status", "deployment/web", "--timeout=180s"); err != nil {
		return fmt.Errorf("wait for deployment web: %w", err)
	}
	if err := kubectl("get", "nodes", "-o", "wide"); err != nil {
		return err
	}
	if err := kubectl("get", "pods", "-o", "wide"); err != nil {
		return err
	}

	for _, n := range l.Nodes() {
		fmt.Fprintf(out, "\n# %s (%s): routes Meridian installed\n", n.Name, n.IP)
		b, err := l.ExecNode(ctx, n.Name, filepath.Join(opts.BinDir, "meridianctl"), "--socket", l.APISocket(n.Name), "routes")
		out.Write(b)
		if err != nil {
			return fmt.Errorf("meridianctl routes on %s: %w", n.Name, err)
		}
	}

	pods, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		return fmt.Errorf("list web pods: %w", err)
	}
	var ready []corev1.Pod
	for _, p := range pods.Items {
		if p.Status.PodIP != "" && p.DeletionTimestamp == nil {
			ready = append(ready, p)
		}
	}
	slices.SortFunc(ready, func(a, b corev1.Pod) int { return strings.Compare(a.Spec.NodeName+a.Name, b.Spec.NodeName+b.Name) })
	if len(ready) == 0 {
		return fmt.Errorf("no web pod has an IP")
	}
	m, err := Matrix(ctx, l, ready)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\n# pod-to-pod reachability (HTTP GET from row to column's pod IP, port 80)\n")
	m.Print(out)

	answered, err := exposeAndFetch(ctx, l, kubectl, ready, out)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, `
The lab is running. Explore it:
  export KUBECONFIG=$(%[1]s/meridian-lab kubeconfig)
  %[1]s/kubectl get pods -o wide
  %[1]s/meridian-lab exec default/client -- wget -qO- http://web
  %[1]s/meridian-lab exec default/%[2]s -- wget -qO- http://%[3]s/
  %[1]s/meridian-lab exec node-1 -- ip route show proto %[4]d
  %[1]s/meridianctl --socket %[5]s peers
  %[1]s/meridian-lab status
  %[1]s/meridian-lab down
`, opts.BinDir, ready[0].Name, ready[len(ready)-1].Status.PodIP, 201, l.APISocket(l.Nodes()[0].Name))
	if f := m.Failures(); f > 0 {
		return fmt.Errorf("%d of %d pod pairs cannot reach each other", f, len(ready)*len(ready))
	}
	if len(answered) == 0 {
		return fmt.Errorf("wget http://web from pod client: no replica answered")
	}
	return nil
}

// fetches is how many times the client fetches http://web: enough that
// three replicas chosen at random all show up with high probability.
const fetches = 12

// exposeAndFetch is the seed's next step: `kubectl expose deployment web
// --port=80`, then `wget -O- http://web` from another pod, by name through
// the cluster's DNS (CoreDNS behind kube-dns, 10.96.0.10) and the ClusterIP
// Meridian programs. It returns how often each replica answered.
func exposeAndFetch(ctx context.Context, l *lab.Lab, kubectl func(...string) error, replicas []corev1.Pod, out io.Writer) (map[string]int, error) {
	client, err := l.Client()
	if err != nil {
		return nil, err
	}
	if _, err := client.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{}); err != nil {
		if err := kubectl("expose", "deployment", "web", "--port=80"); err != nil {
			return nil, fmt.Errorf("expose deployment web: %w", err)
		}
	}
	if _, err := client.CoreV1().Pods("default").Get(ctx, "client", metav1.GetOptions{}); err != nil {
		if err := kubectl("run", "client", "--image=busybox", "--restart=Never", "--", "sleep", "86400"); err != nil {
			return nil, fmt.Errorf("run pod client: %w", err)
		}
	}
	if err := kubectl("wait", "--for=condition=Ready", "pod/client", "--timeout=180s"); err != nil {
		return nil, fmt.Errorf("wait for pod client: %w", err)
	}
	dctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	err = l.WaitDNSReady(dctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("wait for CoreDNS: %w", err)
	}
	if err := kubectl("get", "service", "web", "-o", "wide"); err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, p := range replicas {
		names[p.Name] = true
	}
	fmt.Fprintf(out, "\n$ kubectl exec client -- wget -qO- http://web   (%d times)\n", fetches)
	answered := map[string]int{}
	var lastErr string
	for range fetches {
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		b, err := l.ExecPod(cctx, "default", "client", "wget", "-q", "-T", "5", "-O-", "http://web/")
		cancel()
		body := strings.TrimSpace(string(b))
		if err != nil {
			lastErr = strings.TrimSpace(err.Error() + " " + body)
			continue
		}
		fmt.Fprintln(out, body)
		for n := range names {
			if strings.Contains(body, "Hello from "+n+" ") {
				answered[n]++
			}
		}
	}
	fmt.Fprintf(out, "\n# replicas that answered http://web (resolved by CoreDNS to the ClusterIP, spread by Meridian's Service NAT)\n")
	for _, p := range replicas {
		fmt.Fprintf(out, "  %-28s on %-7s %d of %d\n", p.Name, p.Spec.NodeName, answered[p.Name], fetches)
	}
	if lastErr != "" {
		fmt.Fprintf(out, "  some fetches failed, last: %s\n", lastErr)
	}
	return answered, nil
}

// Result is one cell of the matrix.
type Result struct {
	OK       bool
	Answered string // the pod that answered, from its page
	Err      string
}

// ReachMatrix holds who reaches whom.
type ReachMatrix struct {
	Pods  []corev1.Pod
	Cells [][]Result
}

// Matrix fetches http://<podIP>/ from every pod to every pod. A cell is OK
// only if the page names the destination pod, so a wrong route that reaches
// some other pod does not count.
func Matrix(ctx context.Context, l *lab.Lab, pods []corev1.Pod) (*ReachMatrix, error) {
	m := &ReachMatrix{Pods: pods, Cells: make([][]Result, len(pods))}
	for i, src := range pods {
		m.Cells[i] = make([]Result, len(pods))
		for j, dst := range pods {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			b, err := l.ExecPod(cctx, src.Namespace, src.Name, "wget", "-q", "-T", "3", "-O-", "http://"+dst.Status.PodIP+"/")
			cancel()
			body := string(b)
			switch {
			case err != nil:
				m.Cells[i][j] = Result{Err: strings.TrimSpace(err.Error() + " " + body)}
			case strings.Contains(body, dst.Name):
				m.Cells[i][j] = Result{OK: true, Answered: dst.Name}
			default:
				m.Cells[i][j] = Result{Err: "answered by someone else: " + strings.TrimSpace(body)}
			}
		}
	}
	return m, nil
}

// Failures counts the cells that did not reach their pod.
func (m *ReachMatrix) Failures() int {
	n := 0
	for _, row := range m.Cells {
		for _, c := range row {
			if !c.OK {
				n++
			}
		}
	}
	return n
}

// Print renders the matrix with node names, so a broken node stands out.
func (m *ReachMatrix) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "FROM \\ TO")
	for _, p := range m.Pods {
		fmt.Fprintf(tw, "\t%s", short(p))
	}
	fmt.Fprintln(tw)
	for i, p := range m.Pods {
		fmt.Fprint(tw, short(p))
		for _, c := range m.Cells[i] {
			if c.OK {
				fmt.Fprint(tw, "\tok")
			} else {
				fmt.Fprint(tw, "\tFAIL")
			}
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	for i, row := range m.Cells {
		for j, c := range row {
			if !c.OK {
				fmt.Fprintf(w, "  %s -> %s: %s\n", m.Pods[i].Name, m.Pods[j].Name, c.Err)
			}
		}
	}
}

func short(p corev1.Pod) string {
	return fmt.Sprintf("%s@%s(%s)", p.Name[strings.LastIndex(p.Name, "-")+1:], p.Spec.NodeName, p.Status.PodIP)
}
