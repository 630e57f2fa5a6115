package engine

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// exitReason classifies how the engine ended and describes it for logs.
//
// A SIGKILL the supervisor did not send is how the kernel's OOM killer ends
// a process, but anyone can send one. When the cgroup (v2) that holds the
// sidecar and the engine exposes memory.events, its oom_kill counter
// decides: an increase since the engine started means an OOM kill, no
// increase means some other sender ("signal"). Without the counter the
// SIGKILL is taken for an OOM kill, the likelier cause in a pod.
func exitReason(ws syscall.WaitStatus, killedByUs bool, oomBefore, oomAfter uint64, haveOOM bool) (reason, detail string) {
	switch {
	case ws.Exited():
		return ReasonExit, fmt.Sprintf("exit code %d", ws.ExitStatus())
	case ws.Signaled():
		sig := ws.Signal()
		detail = "killed by " + sigName(sig)
		if sig == syscall.SIGKILL && !killedByUs {
			if !haveOOM || oomAfter > oomBefore {
				return ReasonOOMKill, detail + " (kernel OOM kill)"
			}
		}
		return ReasonSignal, detail
	}
	return ReasonExit, fmt.Sprintf("wait status %#x", uint32(ws))
}

func sigName(s syscall.Signal) string {
	switch s {
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGSEGV:
		return "SIGSEGV"
	case syscall.SIGABRT:
		return "SIGABRT"
	case syscall.SIGBUS:
		return "SIGBUS"
	case syscall.SIGINT:
		return "SIGINT"
	}
	return "signal " + strconv.Itoa(int(s))
}

// oomKills reads the OOM-kill counter of this process's memory cgroup:
// memory.events on cgroup v2, memory.oom_control on v1 (kernels from 4.13).
// Inside a container with its own cgroup namespace the path in
// /proc/self/cgroup may not exist under the mount, whose root is then the
// container's own cgroup, so the root is the fallback.
func oomKills() (uint64, bool) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0, false
	}
	var candidates []string
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			candidates = append(candidates,
				filepath.Join("/sys/fs/cgroup", p, "memory.events"), "/sys/fs/cgroup/memory.events")
		}
		if _, p, ok := strings.Cut(line, ":memory:"); ok {
			candidates = append(candidates,
				filepath.Join("/sys/fs/cgroup/memory", p, "memory.oom_control"), "/sys/fs/cgroup/memory/memory.oom_control")
		}
	}
	for _, c := range candidates {
		if n, ok := parseOOMKills(c); ok {
			return n, true
		}
	}
	return 0, false
}

func parseOOMKills(path string) (uint64, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "oom_kill "); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
