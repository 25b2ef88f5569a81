package rules

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// maxDirDepth bounds how deep Load descends into directories, which also
// stops symbolic-link loops that os.SameFile does not catch.
const maxDirDepth = 32

// Load reads the rules at path: one file, or every regular file in a
// directory tree, in sorted order. Names starting with a dot are skipped, so
// the "..data" and "..<timestamp>" directories of a Kubernetes ConfigMap are
// read through their visible symbolic links, once. Symbolic links are
// followed.
//
// Loading is all-or-nothing: if any file is bad, Load returns no Config and
// an error for each bad file (joined with errors.Join; errors.As finds the
// *ParseError). An empty directory gives an empty Config.
func Load(path string) (*Config, error) {
	files, err := readTree(path)
	if err != nil {
		return nil, err
	}
	return build(files)
}

// build parses the files and assembles the Config.
func build(files []sourceFile) (*Config, error) {
	var (
		domains []*Domain
		errs    []error
	)
	for _, f := range files {
		d, err := Parse(f.name, f.data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		domains = append(domains, d)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return NewConfig(domains...)
}

// sourceFile is one rule file as read from disk.
type sourceFile struct {
	name    string // the path used in errors
	data    []byte
	modTime time.Time
}

// readTree reads the rule files at path, sorted by name.
func readTree(path string) ([]sourceFile, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	if !fi.IsDir() {
		f, err := readFile(path)
		if err != nil {
			return nil, err
		}
		return []sourceFile{f}, nil
	}
	var files []sourceFile
	if err := walk(path, []os.FileInfo{fi}, &files); err != nil {
		return nil, err
	}
	return files, nil
}

// walk appends the files under dir; ancestors holds the directories on the
// way down, to refuse symbolic links that loop.
func walk(dir string, ancestors []os.FileInfo, files *[]sourceFile) error {
	if len(ancestors) > maxDirDepth {
		return fmt.Errorf("rules: %s: directories nested deeper than %d", dir, maxDirDepth)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("rules: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	for _, name := range names {
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p) // follows symbolic links
		if err != nil {
			return fmt.Errorf("rules: %w", err)
		}
		switch {
		case fi.IsDir():
			for _, a := range ancestors {
				if os.SameFile(a, fi) {
					return fmt.Errorf("rules: %s: symbolic link loop", p)
				}
			}
			if err := walk(p, append(ancestors, fi), files); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			f, err := readFile(p)
			if err != nil {
				return err
			}
			*files = append(*files, f)
		}
	}
	return nil
}

func readFile(path string) (sourceFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return sourceFile{}, fmt.Errorf("rules: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return sourceFile{}, fmt.Errorf("rules: %w", err)
	}
	// Read one byte past the limit so that Parse sees the file is too big
	// without reading all of it.
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return sourceFile{}, fmt.Errorf("rules: read %s: %w", path, err)
	}
	return sourceFile{name: path, data: data, modTime: fi.ModTime()}, nil
}
