package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// bindEnv gives every flag of fs an environment variable, LEVEE_ and the
// flag name in upper case with dashes as underscores (--grpc-addr is
// LEVEE_GRPC_ADDR). A flag given on the command line wins over the
// environment.
func bindEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		name := envName(f.Name)
		if v, ok := os.LookupEnv(name); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", name, v, e)
			}
		}
	})
	return err
}

func envName(flag string) string {
	return "LEVEE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// envUsage adds each flag's variable to its usage text.
func envUsage(fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		f.Usage += " [$" + envName(f.Name) + "]"
	})
}
