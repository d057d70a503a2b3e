// Package vm runs Go test binaries inside a throw-away QEMU virtual machine
// booting Debian's stock kernel, for the kernel features the host lacks (the
// IPIP tests on a host kernel built without ipip).
//
// Everything comes from Debian's archive through apt: the kernel package
// (linux-image-<release>, the one linux-image-amd64 depends on) and
// busybox-static are downloaded with `apt-get download` into a cache
// directory and unpacked with dpkg-deb; qemu-system-x86 is a Debian package
// `make deps` installs. An initramfs (newc cpio, written here) carries
// busybox, an /init script, the kernel modules asked for with their
// dependencies, and the test binaries; /init loads the modules in dependency
// order, runs each test binary in turn and prints its exit status on the
// serial console as a marker line carrying a per-boot nonce, then powers off.
// QEMU runs under TCG (software emulation: no KVM is needed, and none is
// assumed), so everything is slow and every wait here is a hang guard, never
// an assertion.
package vm
