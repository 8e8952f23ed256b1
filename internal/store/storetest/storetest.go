// Package storetest is the conformance suite every store.Store backend must
// pass: the in-process Memory store today, embedded and external etcd next.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/bulsajo/bulsajo/internal/store"
)

// Run runs the suite; open returns a fresh, empty store for each subtest.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	t.Run("PutGet", func(t *testing.T) {
		s := open(t)
		r1, err := s.Put(ctx, "/a", []byte("1"))
		if err != nil {
			t.Fatal(err)
		}
		r2, _ := s.Put(ctx, "/a", []byte("2"))
		if r2 <= r1 {
			t.Errorf("revisions must grow: %d then %d", r1, r2)
		}
		kv, err := s.Get(ctx, "/a")
		if err != nil || string(kv.Value) != "2" || kv.Revision != r2 {
			t.Errorf("Get = %+v, %v; want value 2 at revision %d", kv, err, r2)
		}
	})
	t.Run("NotFound", func(t *testing.T) {
		if _, err := open(t).Get(ctx, "/missing"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("err %v, want ErrNotFound", err)
		}
	})
	t.Run("ListPrefixInOrder", func(t *testing.T) {
		s := open(t)
		for _, k := range []string{"/run/b", "/run/a", "/other/x", "/run/c"} {
			s.Put(ctx, k, []byte(k))
		}
		kvs, err := s.List(ctx, "/run/")
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, kv := range kvs {
			keys = append(keys, kv.Key)
		}
		if fmt.Sprint(keys) != "[/run/a /run/b /run/c]" {
			t.Errorf("List = %v", keys)
		}
	})
	t.Run("CompareAndPut", func(t *testing.T) {
		s := open(t)
		r, err := s.CompareAndPut(ctx, "/gen", []byte("1"), 0)
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		if _, err := s.CompareAndPut(ctx, "/gen", []byte("x"), 0); !errors.Is(err, store.ErrConflict) {
			t.Errorf("create over existing: %v, want ErrConflict", err)
		}
		if _, err := s.CompareAndPut(ctx, "/gen", []byte("2"), r); err != nil {
			t.Errorf("update at current revision: %v", err)
		}
		if _, err := s.CompareAndPut(ctx, "/gen", []byte("3"), r); !errors.Is(err, store.ErrConflict) {
			t.Errorf("update at stale revision: %v, want ErrConflict", err)
		}
	})
	t.Run("OneWinnerUnderContention", func(t *testing.T) {
		s := open(t)
		var wg sync.WaitGroup
		var mu sync.Mutex
		wins := 0
		for i := 0; i < 16; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := s.CompareAndPut(ctx, "/leader", []byte("me"), 0); err == nil {
					mu.Lock()
					wins++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if wins != 1 {
			t.Errorf("%d writers won, want exactly 1", wins)
		}
	})
	t.Run("CancelledContext", func(t *testing.T) {
		c, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := open(t).Put(c, "/a", nil); !errors.Is(err, context.Canceled) {
			t.Errorf("err %v, want context.Canceled", err)
		}
	})
}
