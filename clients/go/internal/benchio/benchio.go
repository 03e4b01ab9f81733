// Package benchio is how the benches' Go programs (cmd/*) talk to the bench
// that drives them (bench/support/go-command.ts): JSON lines. The program
// first prints {"msg":"<name> ready","pid":N}; then each line on stdin is a
// command with an "id" and a "cmd", and each answer is a line on stdout with
// that id and "ok" (false with an "error"). {"cmd":"exit"} ends the program,
// as does the end of stdin.
package benchio

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
)

var (
	outMu sync.Mutex
	out   = bufio.NewWriter(os.Stdout)
)

// Reply writes one line; safe from any goroutine.
func Reply(v map[string]any) {
	b, err := json.Marshal(v)
	if err != nil {
		b = fmt.Appendf(nil, `{"id":%v,"ok":false,"error":%q}`, v["id"], err.Error())
	}
	outMu.Lock()
	defer outMu.Unlock()
	out.Write(b)
	out.WriteByte('\n')
	out.Flush()
}

// Answer answers command id: ok with fields (which it takes over), or err.
func Answer(id int64, fields map[string]any, err error) {
	if err != nil {
		Reply(map[string]any{"id": id, "ok": false, "error": err.Error()})
		return
	}
	if fields == nil {
		fields = map[string]any{}
	}
	fields["id"], fields["ok"] = id, true
	Reply(fields)
}

// Serve announces the program as ready, then hands each command but "exit"
// to handle, with its id, its name and its whole line (to decode into the
// program's own type), until "exit" or the end of stdin. handle answers
// through Answer or Reply, at once or later from another goroutine.
func Serve(name string, handle func(id int64, cmd string, line []byte)) {
	Reply(map[string]any{"msg": name + " ready", "pid": os.Getpid()})
	in := bufio.NewReader(os.Stdin)
	for {
		line, err := in.ReadBytes('\n')
		if len(line) > 0 {
			var head struct {
				ID  int64  `json:"id"`
				Cmd string `json:"cmd"`
			}
			if jerr := json.Unmarshal(line, &head); jerr != nil {
				Reply(map[string]any{"ok": false, "error": "bad command: " + jerr.Error()})
			} else if head.Cmd == "exit" {
				Answer(head.ID, nil, nil)
				return
			} else {
				handle(head.ID, head.Cmd, line)
			}
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
			os.Exit(1)
		}
	}
}

// CPUSeconds is this process's user and system CPU time so far.
func CPUSeconds() float64 {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		return 0
	}
	return float64(u.Utime.Nano()+u.Stime.Nano()) / 1e9
}
