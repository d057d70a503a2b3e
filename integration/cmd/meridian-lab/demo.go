package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/meridian-net/meridian/integration/bench"
	"github.com/meridian-net/meridian/integration/walkthrough"
)

// walkthroughCmd runs the seed's first steps on the running lab.
func walkthroughCmd(ctx context.Context, g *globals, args []string) error {
	var replicas int
	rest, err := subFlags("walkthrough", g, args, func(fs *flag.FlagSet) {
		fs.IntVar(&replicas, "replicas", 3, "replicas of the web deployment")
	})
	if err != nil {
		return err
	}
	if err := noArgs("walkthrough", rest); err != nil {
		return err
	}
	l, err := loadLab(g)
	if err != nil {
		return err
	}
	return walkthrough.Run(ctx, l, walkthrough.Options{BinDir: l.BinDir(), Replicas: replicas, Out: os.Stdout})
}

// benchCmd measures pod start-up, CNI ADD latency and throughput, Service
// NAT and NetworkPolicy on the running lab and writes the figures as JSON
// too.
func benchCmd(ctx context.Context, g *globals, args []string) error {
	var out string
	var pods, rounds int
	var iperf time.Duration
	var services string
	var servicesOnly, policiesOnly, bgpOnly bool
	var bgpPrefixes string
	var bgpWithdraws int
	var policies, policyPods int
	rest, err := subFlags("bench", g, args, func(fs *flag.FlagSet) {
		fs.StringVar(&services, "services", "1000,5000,10000", "Service counts for kube-proxy vs meridiand, comma-separated (e.g. 1000,5000; 0: skip)")
		fs.BoolVar(&servicesOnly, "services-only", false, "run only the Service benchmark")
		fs.IntVar(&policies, "policies", 1000, "NetworkPolicies for kube-network-policies vs meridiand (0: skip)")
		fs.IntVar(&policyPods, "policy-pods", 2000, "pods the policies select from, over three bench Nodes")
		fs.BoolVar(&policiesOnly, "policies-only", false, "run only the NetworkPolicy benchmark")
		fs.StringVar(&bgpPrefixes, "bgp-prefixes", "10k,100k", "prefix counts a GoBGP injector announces to meridiand and to BIRD, comma-separated (0: skip)")
		fs.IntVar(&bgpWithdraws, "bgp-withdraws", 5, "times a node's pod CIDR withdrawal is timed (0: skip)")
		fs.BoolVar(&bgpOnly, "bgp-only", false, "run only the BGP benchmark")
		fs.StringVar(&out, "out", "bench/results.json", "where to write the figures as JSON")
		fs.IntVar(&pods, "pods", 50, "pods for the start-up and CNI figures")
		fs.IntVar(&rounds, "rounds", 3, "iperf3 rounds of each kind")
		fs.DurationVar(&iperf, "iperf-time", 5*time.Second, "length of each iperf3 run")
	})
	if err != nil {
		return err
	}
	if err := noArgs("bench", rest); err != nil {
		return err
	}
	l, err := loadLab(g)
	if err != nil {
		return err
	}
	sizes, err := bench.ParseSizes(services)
	if err != nil {
		return fmt.Errorf("%w: bench --services: %w", errUsage, err)
	}
	bgpSizes, err := bench.ParseSizes(bgpPrefixes)
	if err != nil {
		return fmt.Errorf("%w: bench --bgp-prefixes: %w", errUsage, err)
	}
	only := 0
	for _, o := range []bool{servicesOnly, policiesOnly, bgpOnly} {
		if o {
			only++
		}
	}
	if only > 1 {
		return fmt.Errorf("%w: bench: --services-only, --policies-only and --bgp-only exclude each other", errUsage)
	}
	if servicesOnly || bgpOnly {
		policies = 0
	}
	if policiesOnly || bgpOnly {
		sizes = nil
	}
	if servicesOnly || policiesOnly {
		bgpSizes, bgpWithdraws = nil, 0
	}
	res := &bench.Results{When: time.Now().UTC(), Nodes: len(l.Nodes())}
	if only == 0 {
		if res, err = bench.Run(ctx, l, bench.Options{BinDir: l.BinDir(), Pods: pods, Rounds: rounds, Iperf: iperf, Out: os.Stdout}); err != nil {
			return err
		}
	}
	if len(sizes) > 0 {
		figs, _, err := bench.RunServices(ctx, l, bench.ServicesOptions{BinDir: l.BinDir(), Sizes: sizes, Out: os.Stdout})
		if err != nil {
			return fmt.Errorf("Service benchmark: %w", err)
		}
		bench.PrintFigures(os.Stdout, figs)
		res.Figures = append(res.Figures, figs...)
	}
	if policies > 0 {
		figs, _, err := bench.RunPolicies(ctx, l, bench.PoliciesOptions{BinDir: l.BinDir(), Policies: policies, Pods: policyPods, Out: os.Stdout})
		if err != nil {
			return fmt.Errorf("NetworkPolicy benchmark: %w", err)
		}
		bench.PrintFigures(os.Stdout, figs)
		res.Figures = append(res.Figures, figs...)
	}
	if len(bgpSizes) > 0 || bgpWithdraws > 0 {
		figs, _, _, err := bench.RunBGP(ctx, l, bench.BGPOptions{BinDir: l.BinDir(), Sizes: bgpSizes, Withdraws: bgpWithdraws, Out: os.Stdout})
		if err != nil {
			return fmt.Errorf("BGP benchmark: %w", err)
		}
		bench.PrintFigures(os.Stdout, figs)
		res.Figures = append(res.Figures, figs...)
	}
	if err := res.Write(out); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	fmt.Printf("figures written to %s\n", out)
	return nil
}
