package katar

import (
	"os/exec"
	"syscall"
)

// dieWithTheTests: the server gets SIGKILL when the test process ends, even when a timeout
// ends it before the tests' cleanups run.
func dieWithTheTests(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
