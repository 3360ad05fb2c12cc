// go-recipes drives etcd's own Go recipes (clientv3/concurrency and contrib/recipes, etcd
// 3.4) for Cairn's interop test (tests/tests/it/interop.rs): each command does one thing
// on a name the Rust side shares, and prints a line at each step so the test can order
// events across the two implementations. Built by the test, offline, from Debian's
// golang-etcd-server-dev (GOPATH mode).
//
// Usage: go-recipes ENDPOINT COMMAND ARGS...
package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
	"go.etcd.io/etcd/clientv3/naming/endpoints"
	recipe "go.etcd.io/etcd/contrib/recipes"
)

func fail(err error) {
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	fail(err)
	return n
}

// waitLine blocks until the test writes a line on stdin: "hold until told".
func waitLine() {
	bufio.NewReader(os.Stdin).ReadString('\n')
}

func main() {
	ctx := context.Background()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{os.Args[1]}, DialTimeout: 5 * time.Second})
	fail(err)
	defer cli.Close()
	session := func() *concurrency.Session {
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
		fail(err)
		return s
	}
	args := os.Args[3:]
	switch os.Args[2] {
	case "lock": // NAME: lock, print, hold until a line on stdin, unlock
		m := concurrency.NewMutex(session(), args[0])
		fail(m.Lock(ctx))
		fmt.Println("locked", m.Header().Revision)
		waitLine()
		fail(m.Unlock(ctx))
		fmt.Println("unlocked")
	case "campaign": // NAME VALUE: campaign, print, hold until a line on stdin, resign
		e := concurrency.NewElection(session(), args[0])
		fail(e.Campaign(ctx, args[1]))
		fmt.Println("elected", e.Rev())
		waitLine()
		fail(e.Resign(ctx))
		fmt.Println("resigned")
	case "leader": // NAME: the current leader's value
		e := concurrency.NewElection(session(), args[0])
		r, err := e.Leader(ctx)
		fail(err)
		fmt.Println("leader", string(r.Kvs[0].Value))
	case "observe": // NAME N: the first N leader values observed
		e := concurrency.NewElection(session(), args[0])
		ch := e.Observe(ctx)
		for i := 0; i < atoi(args[1]); i++ {
			r := <-ch
			fmt.Println("observed", string(r.Kvs[0].Value))
		}
	case "enqueue": // NAME ITEM...
		q := recipe.NewQueue(cli, args[0])
		for _, item := range args[1:] {
			fail(q.Enqueue(item))
		}
		fmt.Println("enqueued")
	case "dequeue": // NAME N
		q := recipe.NewQueue(cli, args[0])
		for i := 0; i < atoi(args[1]); i++ {
			v, err := q.Dequeue()
			fail(err)
			fmt.Println("item", v)
		}
	case "penqueue": // NAME ITEM PRIORITY [ITEM PRIORITY]...
		q := recipe.NewPriorityQueue(cli, args[0])
		for i := 1; i+1 < len(args); i += 2 {
			fail(q.Enqueue(args[i], uint16(atoi(args[i+1]))))
		}
		fmt.Println("enqueued")
	case "pdequeue": // NAME N
		q := recipe.NewPriorityQueue(cli, args[0])
		for i := 0; i < atoi(args[1]); i++ {
			v, err := q.Dequeue()
			fail(err)
			fmt.Println("item", v)
		}
	case "rlock", "wlock": // NAME: take it, print, hold until a line on stdin, release
		m := recipe.NewRWMutex(session(), args[0])
		if os.Args[2] == "rlock" {
			fail(m.RLock())
		} else {
			fail(m.Lock())
		}
		fmt.Println("locked")
		waitLine()
		if os.Args[2] == "rlock" {
			fail(m.RUnlock())
		} else {
			fail(m.Unlock())
		}
		fmt.Println("unlocked")
	case "barrier-hold": // KEY
		fail(recipe.NewBarrier(cli, args[0]).Hold())
		fmt.Println("held")
	case "barrier-release": // KEY
		fail(recipe.NewBarrier(cli, args[0]).Release())
		fmt.Println("released")
	case "barrier-wait": // KEY
		fmt.Println("waiting")
		fail(recipe.NewBarrier(cli, args[0]).Wait())
		fmt.Println("passed")
	case "double": // NAME COUNT: enter, print, leave when told, print
		b := recipe.NewDoubleBarrier(session(), args[0], atoi(args[1]))
		fail(b.Enter())
		fmt.Println("entered")
		waitLine()
		fail(b.Leave())
		fmt.Println("left")
	case "stm": // PREFIX ACCOUNTS TRANSFERS ISOLATION: random transfers of 1 between accounts
		iso := map[string]concurrency.Isolation{
			"serializable-snapshot": concurrency.SerializableSnapshot,
			"serializable":          concurrency.Serializable,
			"repeatable-reads":      concurrency.RepeatableReads,
		}[args[3]]
		accounts := atoi(args[1])
		rng := rand.New(rand.NewSource(time.Now().UnixNano()))
		for i := 0; i < atoi(args[2]); i++ {
			from := fmt.Sprintf("%s%d", args[0], rng.Intn(accounts))
			to := fmt.Sprintf("%s%d", args[0], rng.Intn(accounts))
			_, err := concurrency.NewSTM(cli, func(s concurrency.STM) error {
				a, _ := strconv.Atoi(s.Get(from))
				if a == 0 || from == to {
					return nil
				}
				b, _ := strconv.Atoi(s.Get(to))
				s.Put(from, strconv.Itoa(a-1))
				s.Put(to, strconv.Itoa(b+1))
				return nil
			}, concurrency.WithIsolation(iso))
			fail(err)
		}
		fmt.Println("done")
	case "endpoint-add": // TARGET KEY ADDR: register under a lease, hold until told
		em, err := endpoints.NewManager(cli, args[0])
		fail(err)
		s := session()
		fail(em.AddEndpoint(ctx, args[1], endpoints.Endpoint{Addr: args[2]}, clientv3.WithLease(s.Lease())))
		fmt.Println("added")
		waitLine()
		fail(s.Close())
		fmt.Println("closed")
	case "endpoint-list": // TARGET: every endpoint, in key order, then "end"
		em, err := endpoints.NewManager(cli, args[0])
		fail(err)
		eps, err := em.List(ctx)
		fail(err)
		keys := make([]string, 0, len(eps))
		for k := range eps {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Println("endpoint", k, eps[k].Addr)
		}
		fmt.Println("end")
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[2]))
	}
}
