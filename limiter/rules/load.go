package rules

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
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

// maxAttempts bounds how often a reader starts again because a Kubernetes
// ConfigMap was swapped under it (see list).
const maxAttempts = 3

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
// directory tree, sorted by name. Names starting with a dot are skipped, and
// symbolic links are followed; one that loops is an error. It checks nothing
// about the content, and reads at most MaxFileSize+1 bytes of a file, so
// that Parse reports one that is too big without it being read whole.
//
// A directory holding a "..data" symbolic link is a mounted Kubernetes
// ConfigMap: its visible names are links into "..data", which points to a
// timestamped directory that Kubernetes replaces whole on every update by
// renaming a new link over "..data". ReadFiles reads the directory "..data"
// points to, through one resolution of the link, so it sees one version of
// the ConfigMap even while Kubernetes swaps it; the files keep their visible
// paths (dir/x.yaml, not dir/..2026_…/x.yaml) in Path and in errors.
func ReadFiles(p string) ([]File, error) {
	for attempt := 1; ; attempt++ {
		snap, err := list(p)
		if err != nil {
			return nil, err
		}
		files := make([]File, 0, len(snap.files))
		for _, e := range snap.files {
			var f File
			if f, _, err = readFile(e); err != nil {
				break
			}
			files = append(files, f)
		}
		if err == nil {
			return files, nil
		}
		if attempt == maxAttempts || !snap.swapped() {
			return nil, err
		}
	}
}

// entry is a rule file found by list.
type entry struct {
	name string      // slash-separated, below the directory listed
	path string      // what the file is called in errors: its visible path
	real string      // what is opened: inside a ConfigMap's data directory, if any
	fi   os.FileInfo // os.Stat of real
}

// snapshot is one listing of a rule tree: its files in name order, and the
// ConfigMap "..data" links it went through with the targets they had.
type snapshot struct {
	files []entry
	links [][2]string // {link, target}
}

// swapped reports whether a ConfigMap link now points elsewhere than when
// it was listed: a read that failed may succeed if the listing starts again.
func (s *snapshot) swapped() bool {
	for _, l := range s.links {
		if t, err := os.Readlink(l[0]); err != nil || t != l[1] {
			return true
		}
	}
	return false
}

// list finds the rule files at p without reading them, as ReadFiles
// describes. Kubernetes deletes the old data directory soon after a swap;
// if that happens during the listing, the listing starts again.
func list(p string) (*snapshot, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	if !fi.IsDir() {
		return &snapshot{files: []entry{{name: filepath.Base(p), path: p, real: p, fi: fi}}}, nil
	}
	for attempt := 1; ; attempt++ {
		s := &snapshot{}
		err := s.walk(p, p, "", []os.FileInfo{fi})
		if err == nil || attempt == maxAttempts || !s.swapped() {
			return s, err
		}
	}
}

// dataLink is the link Kubernetes swaps in a ConfigMap volume.
const dataLink = "..data"

// walk appends the files under dir, shown as under show and named below
// rel; ancestors holds the directories on the way down, to refuse symbolic
// links that loop.
func (s *snapshot) walk(dir, show, rel string, ancestors []os.FileInfo) error {
	if len(ancestors) > maxDirDepth {
		return fmt.Errorf("rules: %s: directories nested deeper than %d", show, maxDirDepth)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("rules: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if e.Name() == dataLink && e.Type()&fs.ModeSymlink != 0 {
			return s.walkData(dir, show, rel, ancestors)
		}
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
		shown := filepath.Join(show, name)
		switch {
		case fi.IsDir():
			if err := s.descend(p, shown, path.Join(rel, name), ancestors, fi); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			s.files = append(s.files, entry{name: path.Join(rel, name), path: shown, real: p, fi: fi})
		}
	}
	return nil
}

// walkData lists a ConfigMap volume through one resolution of its "..data"
// link, instead of through the visible links, which each resolve "..data"
// again and could straddle a swap.
func (s *snapshot) walkData(dir, show, rel string, ancestors []os.FileInfo) error {
	link := filepath.Join(dir, dataLink)
	target, err := os.Readlink(link)
	if err != nil {
		return fmt.Errorf("rules: %w", err)
	}
	s.links = append(s.links, [2]string{link, target})
	data := target
	if !filepath.IsAbs(data) {
		data = filepath.Join(dir, data)
	}
	fi, err := os.Stat(data)
	if err != nil {
		return fmt.Errorf("rules: %s: %w", link, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("rules: %s points to %s, which is not a directory", link, target)
	}
	return s.descend(data, show, rel, ancestors, fi)
}

func (s *snapshot) descend(dir, show, rel string, ancestors []os.FileInfo, fi os.FileInfo) error {
	for _, a := range ancestors {
		if os.SameFile(a, fi) {
			return fmt.Errorf("rules: %s: symbolic link loop", show)
		}
	}
	return s.walk(dir, show, rel, append(ancestors, fi))
}

// readFile reads a listed file, and returns it with the file's state when
// it was opened, so that a later change shows in a later stat.
func readFile(e entry) (File, os.FileInfo, error) {
	f, err := os.Open(e.real)
	if err != nil {
		return File{}, nil, fmt.Errorf("rules: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return File{}, nil, fmt.Errorf("rules: %w", err)
	}
	// Read one byte past the limit so that Parse sees the file is too big
	// without reading all of it.
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return File{}, nil, fmt.Errorf("rules: read %s: %w", e.path, err)
	}
	return File{Name: e.name, Path: e.path, Data: data, ModTime: fi.ModTime()}, fi, nil
}
