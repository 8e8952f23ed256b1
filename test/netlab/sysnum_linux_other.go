//go:build linux && !amd64 && !arm64

package netlab

// Unknown here: Host.Listen and Host.Dial report an error.
const sysSetns = -1
