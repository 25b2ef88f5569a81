package configstore

import (
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// maxDirDepth bounds how deep ReadRules descends, which also stops
// symbolic-link loops.
const maxDirDepth = 32

// ReadRules reads rule files for a Bundle from each path: a file, named by
// its base name, or a directory tree, each file named by its slash-separated
// path below the directory. Like rules.Load, it follows symbolic links and
// skips names starting with '.', so a Kubernetes ConfigMap directory is read
// once through its visible links. It checks nothing about the content
// (Validate does) except that no file is larger than MaxBundleSize. Two
// files with the same name are an error.
func ReadRules(paths ...string) (map[string][]byte, error) {
	files := map[string][]byte{}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("configstore: %w", err)
		}
		if fi.IsDir() {
			err = readDir(files, p, "", 0)
		} else {
			err = readRuleFile(files, filepath.Base(p), p)
		}
		if err != nil {
			return nil, err
		}
	}
	return files, nil
}

func readDir(files map[string][]byte, dir, rel string, depth int) error {
	if depth > maxDirDepth {
		return fmt.Errorf("configstore: %s: directories nested deeper than %d (a symbolic link loop?)", dir, maxDirDepth)
	}
	entries, err := os.ReadDir(dir) // sorted by name
	if err != nil {
		return fmt.Errorf("configstore: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		fi, err := os.Stat(p) // follows symbolic links
		if err != nil {
			return fmt.Errorf("configstore: %w", err)
		}
		name := path.Join(rel, e.Name())
		switch {
		case fi.IsDir():
			err = readDir(files, p, name, depth+1)
		case fi.Mode().IsRegular():
			err = readRuleFile(files, name, p)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func readRuleFile(files map[string][]byte, name, p string) error {
	if _, dup := files[name]; dup {
		return fmt.Errorf("configstore: two rule files are both named %q (the second is %s); rename one", name, p)
	}
	data, err := ReadFile(p)
	if err != nil {
		return err
	}
	files[name] = data
	return nil
}

// ReadFile reads one file of a bundle (a rule file or a shedding policy),
// refusing one larger than MaxBundleSize without reading all of it.
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
		return nil, fmt.Errorf("configstore: %s is larger than the %d bytes a whole configuration may hold", p, MaxBundleSize)
	}
	return data, nil
}
