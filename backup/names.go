package backup

import (
	"bufio"
	"bytes"
	"container/heap"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"

	"github.com/tidemarkdb/tidemark/pg"
)

// A database directory of a million relation files has a million names:
// about 32 bytes each as Go strings, 32 MiB, and ten times that at ten
// million. A backup needs them in name order (parts are cut by name,
// filemap.PartEnds), so it reads a directory in batches of namesBatch
// names; once a directory has more than one batch, each batch is sorted
// and written to a temporary file (unlinked at once: the system removes
// it with the process), and the names are read back merged from those
// runs. What stays in memory is one batch and a small buffer per run.

// namesBatch is how many names a directory listing holds in memory: a
// directory of up to this many is listed in memory as before.
const namesBatch = 1 << 16

// namesRunBuf is the read buffer of one run while merging.
const namesRunBuf = 16 << 10

// dirNames is the sorted names of one directory.
type dirNames struct {
	n   int
	mem []string   // all names, sorted, when no run was written
	run []*os.File // sorted batches of NUL-terminated names
	// unlogged is pg.UnloggedRelations of all the names.
	unlogged map[uint32]bool
	// pgVersion: a name is PG_VERSION (what walkParted checks first).
	pgVersion bool
}

// readDirNames lists directory abs in batches; more than batch names
// (namesBatch when 0) go to sorted runs in spillDir. If a run cannot be
// written there, the names stay in memory.
func readDirNames(abs, spillDir string, batchSize int) (*dirNames, error) {
	if batchSize <= 0 {
		batchSize = namesBatch
	}
	f, err := os.Open(abs)
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", abs, err)
	}
	defer f.Close()
	d := &dirNames{}
	var batch []string
	for {
		got, err := f.Readdirnames(1024)
		d.n += len(got)
		for _, name := range got {
			if name == "PG_VERSION" {
				d.pgVersion = true
			}
		}
		if u := pg.UnloggedRelations(got); len(u) > 0 {
			if d.unlogged == nil {
				d.unlogged = make(map[uint32]bool)
			}
			maps.Copy(d.unlogged, u)
		}
		batch = append(batch, got...)
		if len(batch) >= batchSize && spillDir != "" {
			if werr := d.spill(batch, spillDir); werr != nil {
				spillDir = "" // keep them in memory
			} else {
				batch = batch[:0]
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			d.close()
			return nil, fmt.Errorf("read directory %s: %w", abs, err)
		}
	}
	if len(d.run) > 0 && len(batch) > 0 {
		if err := d.spill(batch, spillDir); err == nil {
			batch = nil
		}
	}
	slices.Sort(batch)
	if len(d.run) > 0 && len(batch) > 0 {
		// A run failed after others were written: merge the runs back
		// into memory rather than lose names.
		all := make([]string, 0, d.n)
		err := d.each(func(name string) bool { all = append(all, name); return true })
		d.close()
		if err != nil {
			return nil, fmt.Errorf("read directory %s: %w", abs, err)
		}
		batch = append(all, batch...)
		slices.Sort(batch)
	}
	d.mem = batch
	return d, nil
}

// spill writes batch, sorted, as a new run.
func (d *dirNames) spill(batch []string, dir string) error {
	slices.Sort(batch)
	f, err := os.CreateTemp(dir, "tidemark-names-*")
	if err != nil {
		return err
	}
	os.Remove(f.Name())
	bw := bufio.NewWriterSize(f, 64<<10)
	for _, name := range batch {
		bw.WriteString(name)
		bw.WriteByte(0)
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return err
	}
	d.run = append(d.run, f)
	return nil
}

// close releases the runs.
func (d *dirNames) close() {
	for _, f := range d.run {
		f.Close()
	}
	d.run = nil
}

// each calls fn with every name in order until fn returns false.
func (d *dirNames) each(fn func(name string) bool) error {
	if len(d.run) == 0 {
		for _, name := range d.mem {
			if !fn(name) {
				return nil
			}
		}
		return nil
	}
	h := &nameHeap{}
	for _, f := range d.run {
		r := &nameRun{br: bufio.NewReaderSize(io.NewSectionReader(f, 0, 1<<62), namesRunBuf)}
		ok, err := r.next()
		if err != nil {
			return err
		}
		if ok {
			h.runs = append(h.runs, r)
		}
	}
	heap.Init(h)
	for len(h.runs) > 0 {
		r := h.runs[0]
		if !fn(r.cur) {
			return nil
		}
		ok, err := r.next()
		if err != nil {
			return err
		}
		if ok {
			heap.Fix(h, 0)
		} else {
			heap.Pop(h)
		}
	}
	return nil
}

// strings returns all the names in memory (a directory walked whole).
func (d *dirNames) strings() ([]string, error) {
	if len(d.run) == 0 {
		return d.mem, nil
	}
	all := make([]string, 0, d.n)
	err := d.each(func(name string) bool { all = append(all, name); return true })
	return all, err
}

// nameRun reads one run.
type nameRun struct {
	br  *bufio.Reader
	cur string
}

func (r *nameRun) next() (bool, error) {
	b, err := r.br.ReadSlice(0)
	if err == io.EOF && len(b) == 0 {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read directory listing: %w", err)
	}
	r.cur = string(bytes.TrimSuffix(b, []byte{0}))
	return true, nil
}

// nameHeap orders runs by their current name.
type nameHeap struct{ runs []*nameRun }

func (h *nameHeap) Len() int           { return len(h.runs) }
func (h *nameHeap) Less(i, j int) bool { return h.runs[i].cur < h.runs[j].cur }
func (h *nameHeap) Swap(i, j int)      { h.runs[i], h.runs[j] = h.runs[j], h.runs[i] }
func (h *nameHeap) Push(x any)         { h.runs = append(h.runs, x.(*nameRun)) }
func (h *nameHeap) Pop() any {
	r := h.runs[len(h.runs)-1]
	h.runs = h.runs[:len(h.runs)-1]
	return r
}
