// Package ipiptest holds kernel tests of the IPIP data path Meridian's
// CrossSubnet and Always modes rely on: pod traffic between two nodes
// crossing tunl0 with onlink routes to the remote node's address. They skip
// on kernels without ipip (the development host's), and integration/vm runs
// the same test binary in a VM booting Debian's kernel, where ipip loads;
// there MERIDIAN_REQUIRE_IPIP=1 turns the skip into a failure.
package ipiptest
