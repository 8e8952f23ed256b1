// Command fakeworker is a scripted stand-in for a training process, for
// bulsajo's integration tests (like Nomad's mock driver): it reads the same
// environment a real worker gets, reports progress through the same local
// endpoint as the Python SDK, and misbehaves on request.
//
//	-steps N           steps to run (then exit 0)
//	-step-time D       time per step
//	-exit-code C       exit with C at -fail-at-step (in generations listed by -fail-gens)
//	-fail-at-step S    step at which to exit with -exit-code (-1: never)
//	-fail-rank R       only this rank fails (-1: every rank)
//	-fail-gens LIST    comma-separated generations that fail (empty: every one)
//	-hang-at-step S    stop reporting progress at step S (sleep forever)
//	-others-hang-at-step S  in the -fail-gens generations, ranks other than
//	                   -fail-rank hang at S: they wait for the culprit as
//	                   ranks blocked in a collective would
//	-ignore-sigterm    ignore SIGTERM (the agent must escalate to SIGKILL)
//	-pid-dir DIR       write DIR/<pid> at start (tests look for orphans)
//	-stderr MSG        write MSG to stderr before failing
//	-step-log FILE     append "GEN RANK STEP UNIXNANO" per step (tests check
//	                   that no two generations ever step at the same time)
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bulsajo/bulsajo/tools/fakeworker/steplog"
)

func main() {
	steps := flag.Int("steps", 20, "")
	stepTime := flag.Duration("step-time", 20*time.Millisecond, "")
	exitCode := flag.Int("exit-code", 1, "")
	failAt := flag.Int("fail-at-step", -1, "")
	failRank := flag.Int("fail-rank", -1, "")
	failGens := flag.String("fail-gens", "", "")
	hangAt := flag.Int("hang-at-step", -1, "")
	othersHangAt := flag.Int("others-hang-at-step", -1, "")
	ignoreTerm := flag.Bool("ignore-sigterm", false, "")
	pidDir := flag.String("pid-dir", "", "")
	msg := flag.String("stderr", "", "")
	stepLog := flag.String("step-log", "", "")
	flag.Parse()

	rank := envInt("RANK", -1)
	gen := envInt("BULSAJO_GENERATION", 0)
	if *ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
	}
	if *pidDir != "" {
		os.WriteFile(filepath.Join(*pidDir, strconv.Itoa(os.Getpid())), nil, 0o644)
	}
	var slog *os.File
	if *stepLog != "" {
		var err error
		if slog, err = os.OpenFile(*stepLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
	}
	// Rank 0 listens on MASTER_PORT, as torch's store does (the agents
	// start the other nodes' ranks when it listens).
	if port := os.Getenv("MASTER_PORT"); rank == 0 && port != "" {
		if l, err := net.Listen("tcp", ":"+port); err == nil {
			defer l.Close()
		}
	}
	var conn net.Conn
	if addr := os.Getenv("BULSAJO_AGENT_SOCK"); addr != "" {
		conn, _ = net.Dial("unixgram", addr)
	}
	badGen := inList(*failGens, gen)
	failsHere := (*failRank < 0 || *failRank == rank) && badGen
	waitsHere := *failRank >= 0 && *failRank != rank && badGen
	for s := 0; s < *steps; s++ {
		if failsHere && s == *failAt {
			if *msg != "" {
				fmt.Fprintln(os.Stderr, *msg)
			}
			os.Exit(*exitCode)
		}
		if (failsHere && s == *hangAt) || (waitsHere && s == *othersHangAt) {
			select {}
		}
		time.Sleep(*stepTime)
		if conn != nil {
			fmt.Fprintf(conn, "step %d %d %d\n", gen, rank, s)
		}
		fmt.Printf("step %d\n", s)
		if slog != nil {
			fmt.Fprint(slog, steplog.Line(gen, rank, s, time.Now()))
		}
	}
}

func envInt(k string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(k)); err == nil {
		return n
	}
	return def
}

func inList(list string, n int) bool {
	if list == "" {
		return true
	}
	for _, f := range strings.Split(list, ",") {
		if v, err := strconv.Atoi(f); err == nil && v == n {
			return true
		}
	}
	return false
}
