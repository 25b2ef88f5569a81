package rules

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// maxDirDepth bounds how deep ReadFiles descends into directories, which
// also stops symbolic-link loops that os.SameFile does not catch.
const maxDirDepth = 32

// Load reads the rules at path, as ReadFiles does, and parses them.
//
// Loading is all-or-nothing: if any file is bad, Load returns no Config and
// an error for each bad file (joined with errors.Join; errors.As finds the
// *ParseError). An empty directory gives an empty Config.
func Load(path string) (*Config, error) {
	files, err := ReadFiles(path)
	if err != nil {
		return nil, err
	}
	return build(files)
}

// build parses the files and assembles the Config.
func build(files []File) (*Config, error) {
	var (
		domains []*Domain
		errs    []error
	)
	for _, f := range files {
		d, err := Parse(f.Path, f.Data)
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

// File is one rule file as read from disk.
type File struct {
	// Name is the file's slash-separated path below the directory read,
	// or the base name of a file read on its own.
	Name string
	// Path is where the file was read from; Load names it in errors.
	Path    string
	Data    []byte
	ModTime time.Time
}

// ReadFiles reads the rule files at p: one file, or every regular file in a
// directory tree, sorted by name. Names starting with a dot are skipped, so
// the "..data" and "..<timestamp>" directories of a Kubernetes ConfigMap are
// read through their visible symbolic links, once. Symbolic links are
// followed; one that loops is an error. It checks nothing about the content,
// and reads at most MaxFileSize+1 bytes of a file, so that Parse reports one
// that is too big without it being read whole.
func ReadFiles(p string) ([]File, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	if !fi.IsDir() {
		f, err := readFile(filepath.Base(p), p)
		if err != nil {
			return nil, err
		}
		return []File{f}, nil
	}
	var files []File
	if err := walk(p, "", []os.FileInfo{fi}, &files); err != nil {
		return nil, err
	}
	return files, nil
}

// walk appends the files under dir, named below rel; ancestors holds the
// directories on the way down, to refuse symbolic links that loop.
func walk(dir, rel string, ancestors []os.FileInfo, files *[]File) error {
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
			if err := walk(p, path.Join(rel, name), append(ancestors, fi), files); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			f, err := readFile(path.Join(rel, name), p)
			if err != nil {
				return err
			}
			*files = append(*files, f)
		}
	}
	return nil
}

func readFile(name, p string) (File, error) {
	f, err := os.Open(p)
	if err != nil {
		return File{}, fmt.Errorf("rules: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return File{}, fmt.Errorf("rules: %w", err)
	}
	// Read one byte past the limit so that Parse sees the file is too big
	// without reading all of it.
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return File{}, fmt.Errorf("rules: read %s: %w", p, err)
	}
	return File{Name: name, Path: p, Data: data, ModTime: fi.ModTime()}, nil
}
