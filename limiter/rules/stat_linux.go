package rules

import (
	"os"
	"syscall"
	"time"
)

// changeTime returns a file's inode change time (ctime), which the kernel
// sets on every write, chmod or utimes and no program can set back: an edit
// that restores the modification time still changes it.
func changeTime(fi os.FileInfo) time.Time {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return time.Unix(st.Ctim.Unix())
	}
	return time.Time{}
}
