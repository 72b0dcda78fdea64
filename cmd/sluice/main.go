// Command sluice is a load balancer that follows Consul.
//
//	sluice run -config FILE       run until SIGINT or SIGTERM
//	sluice validate -config FILE  check a configuration file
//	sluice version                print the version
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/sluice-lb/sluice/cmd/sluice/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  sluice run -config FILE [-log-level LEVEL] [-cpuprofile FILE]   run the load balancer
  sluice validate -config FILE                 check a configuration file
  sluice version                               print the version
`

// run dispatches a command line and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "version", "-version", "--version":
		fmt.Fprintf(stdout, "sluice %s\n", version)
		return 0
	case "validate":
		fs := flag.NewFlagSet("validate", flag.ContinueOnError)
		fs.SetOutput(stderr)
		path := fs.String("config", "config.hcl", "configuration file")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		if fs.NArg() > 0 {
			fmt.Fprintf(stderr, "sluice: unexpected argument %q (the file is given with -config)\n", fs.Arg(0))
			return 2
		}
		cfg, ok := load(*path, stderr)
		if !ok {
			return 1
		}
		fmt.Fprintf(stdout, "%s: ok: %s\n", *path, summary(cfg))
		return 0
	case "run":
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		fs.SetOutput(stderr)
		path := fs.String("config", "config.hcl", "configuration file")
		level := fs.String("log-level", "info", "log level: trace, debug, info, warn, error")
		cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		if fs.NArg() > 0 {
			fmt.Fprintf(stderr, "sluice: unexpected argument %q (the file is given with -config)\n", fs.Arg(0))
			return 2
		}
		sigs := notifySignals()
		defer sigs.release()
		cfg, ok := load(*path, stderr)
		if !ok {
			return 1
		}
		if *cpuProfile != "" {
			f, err := os.Create(*cpuProfile)
			if err != nil {
				fmt.Fprintf(stderr, "sluice: %v\n", err)
				return 1
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				fmt.Fprintf(stderr, "sluice: %v\n", err)
				return 1
			}
			defer pprof.StopCPUProfile()
		}
		if err := serve(*path, cfg, *level, stderr, sigs); err != nil {
			fmt.Fprintf(stderr, "sluice: %v\n", err)
			return 1
		}
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "sluice: unknown command %q\n%s", args[0], usage)
	return 2
}

// load parses and validates a file, printing every problem as
// FILE:LINE,COL: message.
func load(path string, stderr io.Writer) (*config.Config, bool) {
	cfg, diags := config.Load(path, config.Options{})
	if diags.HasErrors() {
		for _, line := range config.FormatDiagnostics(diags) {
			fmt.Fprintln(stderr, line)
		}
		return nil, false
	}
	return cfg, true
}

// summary is the one-line description validate prints on success.
func summary(cfg *config.Config) string {
	var http, tcp int
	for _, l := range cfg.Listeners {
		if l.Protocol == config.ProtocolTCP {
			tcp++
		} else {
			http++
		}
	}
	out := fmt.Sprintf("%d http and %d tcp listeners, %d services (%s), consul %s",
		http, tcp, len(cfg.Services), strings.Join(cfg.ServiceNames(), ", "), cfg.Consul.Address)
	if r := cfg.Register; r != nil {
		out += fmt.Sprintf(", registers %q as %s", r.Name, r.ID)
	}
	return out
}
