// Command pause is the pod sandbox process of our kind node image: it holds the pod's
// namespaces open, reaps zombies (it is PID 1 of the sandbox) and exits on SIGINT/SIGTERM.
// It does the job of Kubernetes' C pause binary, which needs a C toolchain we do not put in
// the image build; ours is a static Go binary built with the other tools.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("pause (wslb) 3.10.2")
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			fmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\n", sig)
			os.Exit(0)
		}
		// reap every child that has exited; processes re-parented to us end up here
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
