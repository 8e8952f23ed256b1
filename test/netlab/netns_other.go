//go:build !linux

package netlab

import "errors"

func enterNetns(string) error { return errors.New("network namespaces need Linux") }

func onMainThread() bool { return false }
