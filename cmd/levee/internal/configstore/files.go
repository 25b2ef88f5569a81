package configstore

import (
	"fmt"
	"io"
	"os"

	"github.com/levee-dev/levee/limiter/rules"
)

// ReadRules reads rule files for a Bundle from each path with
// rules.ReadFiles: a file is named by its base name, a directory tree's
// files by their slash-separated paths below the directory. It checks
// nothing about the content (Validate does) except that no file is larger
// than MaxBundleSize, which is a *ValidationError. Two files with the same
// name are an error.
func ReadRules(paths ...string) (map[string][]byte, error) {
	files := map[string][]byte{}
	for _, p := range paths {
		read, err := rules.ReadFiles(p)
		if err != nil {
			return nil, err
		}
		for _, f := range read {
			if _, dup := files[f.Name]; dup {
				return nil, fmt.Errorf("configstore: two rule files are both named %q (the second is %s); rename one", f.Name, f.Path)
			}
			if len(f.Data) > MaxBundleSize {
				return nil, tooLarge(f.Path)
			}
			files[f.Name] = f.Data
		}
	}
	return files, nil
}

// ReadFile reads one file of a bundle (a rule file or a shedding policy),
// refusing one larger than MaxBundleSize, without reading all of it, with
// a *ValidationError.
func ReadFile(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("configstore: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxBundleSize+1))
	if err != nil {
		return nil, fmt.Errorf("configstore: reading %s: %w", p, err)
	}
	if len(data) > MaxBundleSize {
		return nil, tooLarge(p)
	}
	return data, nil
}

func tooLarge(p string) error {
	return invalid("%s is larger than the %d bytes a whole configuration may hold", p, MaxBundleSize)
}
