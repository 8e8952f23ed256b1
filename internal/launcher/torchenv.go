package launcher

import (
	"bytes"
	"os"
)

// What the installed torch needs in its workers' environment that depends on
// how it was built. The standby shim finds out for free (it has imported
// torch already) and sets it in its own process; it tells the launcher with
// one datagram on the progress endpoint so that the user hears it once.
//
// USE_LIBUV=0: torch 2.4+'s TCPStore uses its libuv backend unless told
// otherwise, and a torch built without libuv (Debian 13's 2.6) then fails
// every env:// rendezvous ("use_libuv was requested but PyTorch was build
// without libuv support"), torchrun's included.

// noLibuvMsg is the shim's datagram for "this torch has no libuv".
var noLibuvMsg = []byte("torch nolibuv")

func isNoLibuv(b []byte) bool { return bytes.Equal(bytes.TrimSpace(b), noLibuvMsg) }

// noteNoLibuv says once per launcher that the workers run with USE_LIBUV=0.
func (a *Launcher) noteNoLibuv() {
	if !a.noLibuv.CompareAndSwap(false, true) || a.cfg.Console == nil || os.Getenv("USE_LIBUV") != "" {
		return
	}
	a.cfg.Console.Printf("  note: USE_LIBUV=0 for each worker: this torch was built without libuv, " +
		"which its TCPStore uses by default; set USE_LIBUV to choose")
}
