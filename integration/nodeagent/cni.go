package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"time"

	"github.com/containernetworking/cni/libcni"
	"k8s.io/apimachinery/pkg/types"
)

// cniTimeout bounds one plugin invocation: a hung plugin must not stall the
// worker forever, the next retry gets another chance.
const cniTimeout = time.Minute

// cniRunner invokes the node's CNI network (the first conflist in the conf
// dir, as kubelet and containerd choose it) through libcni, with libcni's
// result cache in the agent's state dir.
type cniRunner struct {
	cni      *libcni.CNIConfig
	confDir  string
	cacheDir string
}

func newCNIRunner(confDir string, binDirs []string, cacheDir string) *cniRunner {
	return &cniRunner{
		cni:      libcni.NewCNIConfigWithCacheDir(binDirs, cacheDir, nil),
		confDir:  confDir,
		cacheDir: cacheDir,
	}
}

// confList loads the network configuration anew on every call, so a
// conflist written after the agent started is picked up (the kubelet's
// "network plugin not ready" until then).
func (c *cniRunner) confList() (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(c.confDir, []string{".conflist"})
	if err != nil {
		return nil, fmt.Errorf("list cni config in %s: %w", c.confDir, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no .conflist in %s", c.confDir)
	}
	slices.Sort(files)
	list, err := libcni.ConfListFromFile(files[0])
	if err != nil {
		return nil, fmt.Errorf("load cni config %s: %w", files[0], err)
	}
	return list, nil
}

// runtimeConf is what kubelet (through the CRI runtime) hands the plugins
// for a pod sandbox; the pod UID stands in for the sandbox container ID.
func runtimeConf(st podState, netnsPath string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: string(st.UID),
		NetNS:       netnsPath,
		IfName:      podIfName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", st.Namespace},
			{"K8S_POD_NAME", st.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", string(st.UID)},
			{"K8S_POD_UID", string(st.UID)},
		},
	}
}

// add runs CNI ADD for the pod and returns its IPs.
func (c *cniRunner) add(ctx context.Context, st podState) ([]netip.Addr, error) {
	list, err := c.confList()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cniTimeout)
	defer cancel()
	res, err := c.cni.AddNetworkList(ctx, list, runtimeConf(st, podNetnsPath(st.Netns)))
	if err != nil {
		return nil, fmt.Errorf("cni add: %w", err)
	}
	return podIPsFromResult(res)
}

// check runs CNI CHECK against the cached ADD result and returns the IPs of
// that result. It fails when there is no cached result, so the caller falls
// back to DEL and ADD.
func (c *cniRunner) check(ctx context.Context, st podState) ([]netip.Addr, error) {
	list, err := c.confList()
	if err != nil {
		return nil, err
	}
	rt := runtimeConf(st, podNetnsPath(st.Netns))
	res, err := c.cni.GetNetworkListCachedResult(list, rt)
	if err != nil {
		return nil, fmt.Errorf("read cached cni result: %w", err)
	}
	if res == nil {
		return nil, errors.New("no cached cni result")
	}
	if !list.DisableCheck {
		ctx, cancel := context.WithTimeout(ctx, cniTimeout)
		defer cancel()
		if err := c.cni.CheckNetworkList(ctx, list, rt); err != nil {
			return nil, fmt.Errorf("cni check: %w", err)
		}
	}
	return podIPsFromResult(res)
}

// del runs CNI DEL for the pod. The netns may already be gone: the spec
// lets CNI_NETNS be empty then, and plugins release what they hold outside
// the netns (routes, host veth, IPAM) all the same.
func (c *cniRunner) del(ctx context.Context, st podState) error {
	list, err := c.confList()
	if err != nil {
		return err
	}
	path := ""
	if netnsExists(st.Netns) {
		path = podNetnsPath(st.Netns)
	}
	ctx, cancel := context.WithTimeout(ctx, cniTimeout)
	defer cancel()
	if err := c.cni.DelNetworkList(ctx, list, runtimeConf(st, path)); err != nil {
		return fmt.Errorf("cni del: %w", err)
	}
	return nil
}

// cachedSandboxes lists the sandboxes libcni holds a cached ADD result for
// in this network (those this agent added and did not delete), rebuilt
// from the cached runtime config: pod namespace and name come from the
// K8S_POD_* arguments.
func (c *cniRunner) cachedSandboxes() ([]podState, error) {
	list, err := c.confList()
	if err != nil {
		return nil, err
	}
	atts, err := c.cni.GetCachedAttachments("")
	if err != nil {
		return nil, fmt.Errorf("read cni cache: %w", err)
	}
	var out []podState
	for _, att := range atts {
		if att.Network != list.Name || att.IfName != podIfName {
			continue
		}
		uid := types.UID(att.ContainerID)
		st := podState{UID: uid, Netns: PodNetnsName(uid)}
		if att.NetNS != "" {
			st.Netns = filepath.Base(att.NetNS)
		}
		for _, a := range att.CniArgs {
			switch a[0] {
			case "K8S_POD_NAMESPACE":
				st.Namespace = a[1]
			case "K8S_POD_NAME":
				st.Name = a[1]
			}
		}
		out = append(out, st)
	}
	return out, nil
}
