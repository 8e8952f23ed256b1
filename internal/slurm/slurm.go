// Package slurm is what bulsajo knows of Slurm: the job it runs in (from the
// environment Slurm sets), draining a bad node, and requeueing the job when
// its batch host is gone. It calls Slurm's own commands (scontrol), so it
// works with any Slurm the user's shell works with.
package slurm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Info is the Slurm job this process runs in.
type Info struct {
	JobID        string `json:"job_id"`
	NodeList     string `json:"node_list,omitempty"` // SLURM_JOB_NODELIST, compressed (n[1-4])
	RestartCount int    `json:"restart_count"`       // SLURM_RESTART_COUNT: times the job was requeued
	Cluster      string `json:"cluster,omitempty"`
}

// FromEnv returns the job of this process, or nil outside a Slurm job.
func FromEnv() *Info {
	id := os.Getenv("SLURM_JOB_ID")
	if id == "" {
		return nil
	}
	rc, _ := strconv.Atoi(os.Getenv("SLURM_RESTART_COUNT"))
	return &Info{JobID: id, NodeList: os.Getenv("SLURM_JOB_NODELIST"), RestartCount: rc, Cluster: os.Getenv("SLURM_CLUSTER_NAME")}
}

// scontrol runs scontrol with args; its error carries scontrol's own words.
func scontrol(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, "scontrol", args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = strings.TrimSpace(out.String())
		}
		if msg == "" {
			msg = err.Error()
		}
		return out.String(), errors.New(msg)
	}
	return out.String(), nil
}

// Drain asks Slurm to drain node with reason (prefixed "bulsajo: "). Only
// root, SlurmUser or a Slurm admin may; a normal user gets Slurm's refusal
// ("Access/permission denied") as the error, to show, not hide.
func Drain(ctx context.Context, node, reason string) error {
	reason = "bulsajo: " + strings.Join(strings.Fields(reason), " ")
	if len(reason) > 200 {
		reason = reason[:200]
	}
	_, err := scontrol(ctx, "update", "NodeName="+node, "State=DRAIN", "Reason="+reason)
	return err
}

// Hostnames expands a compressed node list (n[1-3,7]).
func Hostnames(ctx context.Context, list string) ([]string, error) {
	out, err := scontrol(ctx, "show", "hostnames", list)
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

// Job is what `scontrol show job` says of a job, the fields bulsajo uses.
type Job struct {
	State     string // RUNNING, PENDING, COMPLETING...
	NodeList  string
	BatchHost string
	Restarts  int
}

// ShowJob reads job's state.
func ShowJob(ctx context.Context, id string) (Job, error) {
	out, err := scontrol(ctx, "show", "job", "-o", id)
	if err != nil {
		return Job{}, err
	}
	return parseJob(out), nil
}

func parseJob(out string) Job {
	var j Job
	for _, f := range strings.Fields(out) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		switch k {
		case "JobState":
			j.State = v
		case "NodeList":
			j.NodeList = v
		case "BatchHost":
			j.BatchHost = v
		case "Restarts":
			j.Restarts, _ = strconv.Atoi(v)
		}
	}
	return j
}

// RequeueTurn is this node's place in line to requeue the job after its
// batch host (and the coordinator on it) is gone: the job's nodes in
// Slurm's order, the batch host left out. Every agent computes the same
// line, so exactly one acts first; the next acts only if the job is still
// there, unrequeued, a turn later (the first may have died too). -1: not
// in line (not a node of the job).
func RequeueTurn(j Job, nodes []string, self string) int {
	line := slices.DeleteFunc(slices.Clone(nodes), func(n string) bool { return n == j.BatchHost })
	return slices.Index(line, self)
}

// RequeueAfterLoss requeues job id from node self, in its turn: it waits
// turn × step, then requeues only if the job still runs as the same
// incarnation (restarts). It reports whether this node requeued it.
func RequeueAfterLoss(ctx context.Context, id, self string, restarts int, step time.Duration, logf func(string, ...any)) (bool, error) {
	j, err := ShowJob(ctx, id)
	if err != nil {
		return false, err
	}
	if j.State != "RUNNING" || j.Restarts != restarts {
		return false, nil // ending, or requeued already
	}
	nodes, err := Hostnames(ctx, j.NodeList)
	if err != nil {
		return false, err
	}
	turn := RequeueTurn(j, nodes, self)
	if turn < 0 {
		turn = len(nodes)
	}
	if turn > 0 {
		logf("… requeue: %d node(s) before this one in line; waiting %s", turn, time.Duration(turn)*step)
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(time.Duration(turn) * step):
		}
		if j, err = ShowJob(ctx, id); err != nil {
			return false, err
		}
		if j.State != "RUNNING" || j.Restarts != restarts {
			return false, nil
		}
	}
	if _, err := scontrol(ctx, "requeue", id); err != nil {
		return false, fmt.Errorf("scontrol requeue %s: %v", id, err)
	}
	return true, nil
}
