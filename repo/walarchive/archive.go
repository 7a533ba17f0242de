package walarchive

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"

	"github.com/tidemarkdb/tidemark/pg"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/agestream"
	"github.com/tidemarkdb/tidemark/storage"
)

// Crypter encrypts and decrypts whole objects as age streams to the
// repository's recipients. *repo.Repo is one.
type Crypter interface {
	encrypter
	Decrypt(src io.Reader) (io.Reader, error)
}

// encrypter starts an age stream on dst (a Crypter, or a session of one).
type encrypter interface {
	Encrypt(dst io.Writer) (io.WriteCloser, error)
}

// sessionCrypter is a Crypter that can also start an age session (one
// header for many files; agestream.Session). *repo.Repo is one. Pieces
// use it: a wal-receive writes hundreds a second, and wrapping a file key
// for each was a fifth of its CPU.
type sessionCrypter interface {
	NewSession() (*agestream.Session, error)
}

// A piece session is replaced after this many pieces or this long,
// whichever comes first, so that one file key protects a bounded share of
// the archive.
const (
	sessionPieces = 4096
	sessionAge    = time.Minute
)

// Options tune an Archive. Zero values take the defaults.
type Options struct {
	Logger *slog.Logger // nil discards
	// CompressionLevel is klauspost/compress zstd's EncoderLevel, 1
	// (fastest) to 4 (best); 0 means 1. WAL is written once and read
	// rarely, and the push is on PostgreSQL's critical path: fastest wins.
	CompressionLevel int
	// NoSummaries archives segments without their block summaries
	// (summary.go), as a tool that knows nothing of them would.
	NoSummaries bool
}

// Archive reads and writes one repository's WAL archive. It is safe for
// concurrent use.
type Archive struct {
	store storage.Store
	crypt Crypter
	mac   MACKey
	log   *slog.Logger
	// summaries: write a block summary beside each segment.
	summaries bool
	enc       *zstd.Encoder
	dec       sync.Pool // *zstd.Decoder, each used by one stream at a time
	bufs      sync.Pool // *bytes.Buffer for objects being uploaded
	// slots hold one workspace per CPU (nil until first used): compressing
	// and checking a chunk takes one, so that concurrent uploads share the
	// CPUs in the order they asked (a channel serves blocked receivers
	// first come, first served) instead of all slowing down together: the
	// oldest segment, the one PostgreSQL waits for, finishes first.
	slots chan *workspace
	// quick are slots of their own for pieces (wal-receive): a commit
	// waits for its piece, which must not queue behind the chunks of
	// whole segments being archived at the same time. A piece is one
	// chunk or less, so they cost a core for a moment at most.
	quick chan *workspace
	// chunks and frames keep buffers across garbage collections (a
	// sync.Pool is emptied by them, and a fresh 4 MiB buffer costs a
	// thousand page faults); each keeps a bounded number.
	chunks freeList // file chunks being compressed, chunkSize
	frames freeList // compressed frames, until the object is encrypted

	mu       sync.Mutex
	clusters map[uint64]ClusterInfo // markers checked by this process

	sessMu    sync.Mutex
	sess      *agestream.Session // for pieces; nil until the first
	sessUses  int
	sessSince time.Time
}

// encrypterFor returns what encrypts an object of m's kind: for a piece, a
// session shared by at most sessionPieces pieces over sessionAge when the
// Crypter offers sessions; else the Crypter.
func (a *Archive) encrypterFor(m *Meta) (encrypter, error) {
	sc, ok := a.crypt.(sessionCrypter)
	if m.Kind != KindPiece || !ok {
		return a.crypt, nil
	}
	a.sessMu.Lock()
	defer a.sessMu.Unlock()
	if a.sess == nil || a.sessUses >= sessionPieces || time.Since(a.sessSince) >= sessionAge {
		s, err := sc.NewSession()
		if err != nil {
			return nil, err
		}
		a.sess, a.sessUses, a.sessSince = s, 0, time.Now()
	}
	a.sessUses++
	return a.sess, nil
}

// New returns the archive in store, encrypted with c and authenticated with
// mac (repo.Repo.WALMACKey).
func New(store storage.Store, c Crypter, mac MACKey, opts Options) *Archive {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	level := opts.CompressionLevel
	if level < 1 || level > 4 {
		level = 1
	}
	// EncodeAll is safe for concurrent calls, each taking one of the
	// encoder's GOMAXPROCS block encoders. No zstd content checksum: the
	// MAC covers every byte of the file and age authenticates every byte of
	// the object, so it would only cost time (about 5% of a push).
	// A 1 MiB window keeps the decoder that checks each frame (and every
	// reader) small; WAL's repeats are closer than that (zstd -1 uses
	// 512 KiB).
	procs := runtime.GOMAXPROCS(0)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.EncoderLevel(level)),
		zstd.WithEncoderConcurrency(procs), zstd.WithEncoderCRC(false),
		zstd.WithWindowSize(windowSize))
	if err != nil {
		panic("walarchive: zstd encoder: " + err.Error()) // only bad options fail
	}
	a := &Archive{store: store, crypt: c, mac: mac, log: log, enc: enc, clusters: map[uint64]ClusterInfo{}, summaries: !opts.NoSummaries,
		slots:  make(chan *workspace, procs),
		quick:  make(chan *workspace, procs),
		chunks: newFreeList(2*procs, chunkSize),
		frames: newFreeList(4*procs, chunkSize/2)}
	for range procs {
		a.slots <- nil
		a.quick <- nil
	}
	return a
}

// FromRepo returns the WAL archive of an open repository, compressed at the
// repository's level unless opts says otherwise.
func FromRepo(r *repo.Repo, opts Options) *Archive {
	if opts.CompressionLevel == 0 {
		opts.CompressionLevel = r.Config().CompressionLevel
	}
	return New(r.Store(), r, r.WALMACKey(), opts)
}

// Store returns the object store the archive lives in.
func (a *Archive) Store() storage.Store { return a.store }

// ClusterInfo is what the cluster marker records: the facts that every WAL
// file of the cluster must agree with. It is written once, by the first push,
// and is the same object format as a WAL file (Kind KindCluster, JSON).
type ClusterInfo struct {
	SystemID  uint64    `json:"system_identifier,string"`
	SegSize   uint32    `json:"wal_segment_size"`
	BlockSize uint32    `json:"wal_block_size"`
	Created   time.Time `json:"created"`
}

// maxMarkerSize bounds the marker's JSON.
const maxMarkerSize = 64 << 10

// Cluster reads a cluster's marker. A cluster that never archived anything
// is a *NotArchivedError.
func (a *Archive) Cluster(ctx context.Context, cluster uint64) (ClusterInfo, error) {
	a.mu.Lock()
	ci, ok := a.clusters[cluster]
	a.mu.Unlock()
	if ok {
		return ci, nil
	}
	key := MarkerKey(cluster)
	var buf bytes.Buffer
	_, err := a.get(ctx, key, expect{name: MarkerName, kind: KindCluster, cluster: cluster}, &limitedWriter{w: &buf, n: maxMarkerSize})
	if err != nil {
		return ClusterInfo{}, err
	}
	if err := json.Unmarshal(buf.Bytes(), &ci); err != nil {
		return ClusterInfo{}, corruptf(key, "marker: %v", err)
	}
	if ci.SystemID != cluster {
		return ClusterInfo{}, corruptf(key, "marker is of system %d", ci.SystemID)
	}
	if err := pg.ValidateWALSegSize(uint64(ci.SegSize)); err != nil {
		return ClusterInfo{}, corruptf(key, "marker: %v", err)
	}
	a.remember(ci)
	return ci, nil
}

func (a *Archive) remember(ci ClusterInfo) {
	a.mu.Lock()
	a.clusters[ci.SystemID] = ci
	a.mu.Unlock()
}

// EnsureCluster checks that the archive of want.SystemID was written with
// the same segment and page size, writing the marker if this is the
// cluster's first push. Put calls it; it costs one GET per Archive.
func (a *Archive) EnsureCluster(ctx context.Context, want ClusterInfo) (ClusterInfo, error) {
	if err := pg.ValidateWALSegSize(uint64(want.SegSize)); err != nil {
		return ClusterInfo{}, err
	}
	for attempt := 0; ; attempt++ {
		have, err := a.Cluster(ctx, want.SystemID)
		if err == nil {
			if have.SegSize != want.SegSize || (want.BlockSize != 0 && have.BlockSize != 0 && have.BlockSize != want.BlockSize) {
				return ClusterInfo{}, &ForeignError{Name: MarkerKey(want.SystemID), Reason: fmt.Sprintf(
					"the archive of system %d holds WAL with %d-byte segments and %d-byte pages, this cluster writes %d and %d "+
						"(was it changed with pg_resetwal? then archive to a new repository)",
					want.SystemID, have.SegSize, have.BlockSize, want.SegSize, want.BlockSize)}
			}
			return have, nil
		}
		if !errors.Is(err, ErrNotArchived) || attempt > 0 {
			return ClusterInfo{}, err
		}
		ci := want
		if ci.Created.IsZero() {
			ci.Created = time.Now().UTC().Truncate(time.Second)
		}
		body, err := json.Marshal(ci)
		if err != nil {
			return ClusterInfo{}, err
		}
		m := Meta{Name: MarkerName, Kind: KindCluster, SystemID: ci.SystemID, SegSize: ci.SegSize, Size: int64(len(body))}
		_, err = a.createBytes(ctx, MarkerKey(ci.SystemID), &m, body)
		if err != nil && !errors.Is(err, storage.ErrExists) {
			return ClusterInfo{}, fmt.Errorf("write cluster marker: %w", err)
		}
		// Created, or a concurrent first push won: read back what is there.
	}
}

// PutResult says what Put did.
type PutResult struct {
	Key string
	// Created is false when an identical file was already archived.
	Created bool
	// Size is the file's size; Stored the object's.
	Size, Stored int64
	// Ahead is how many chunks took a frame compressed ahead
	// (PutFromAhead).
	Ahead int
	// Summary is the key of the segment's block summary when one was
	// written or found; SummaryErr says why none was (the segment is
	// archived all the same: an incremental backup that needs its WAL
	// falls back to reading page LSNs).
	Summary    string
	SummaryErr error
}

// Put archives the WAL file called name with contents data for the cluster
// ci describes (ci.SystemID, ci.SegSize and ci.BlockSize from pg_control).
// It returns only once the object is durable (the store acknowledged it with
// a checksum) or was already archived with identical contents. Segments are
// checked first: full size, a first page header that belongs in the file
// called name, and the cluster's system identifier, segment size and page
// size. History and backup history files must parse.
func (a *Archive) Put(ctx context.Context, ci ClusterInfo, name string, data []byte) (PutResult, error) {
	return a.PutFrom(ctx, ci, name, bytes.NewReader(data), int64(len(data)))
}

// PutFrom is Put for a file of size bytes read from r, which must then
// return io.EOF. A segment is checked, compressed and authenticated as it
// is read, a chunk at a time, so that only a few chunks of it are in memory
// at once. Nothing is uploaded before r has returned io.EOF: a reader that
// checks its file once it has read all of it (wal.Pusher: the file must not
// have changed meanwhile) stops the upload by failing instead. Errors of r
// are returned as they are.
func (a *Archive) PutFrom(ctx context.Context, ci ClusterInfo, name string, r io.Reader, size int64) (PutResult, error) {
	return a.PutFromAhead(ctx, ci, name, r, size, nil)
}

// PutFromAhead is PutFrom for a segment of which pieces were compressed
// while it was being written (see Ahead): a piece of the file read from r
// that is byte for byte the one a frame was made from is not compressed
// again. The object is the same as PutFrom's but for where its zstd frames
// end.
func (a *Archive) PutFromAhead(ctx context.Context, ci ClusterInfo, name string, r io.Reader, size int64, ahead *Ahead) (PutResult, error) {
	f, err := checkName(name)
	if err != nil {
		return PutResult{}, err
	}
	if err := checkSize(ci, f, size); err != nil {
		return PutResult{}, err
	}
	var head func([]byte) error
	switch f.Kind {
	case pg.WALSegment, pg.WALPartialSegment:
		// The first page says whose segment this is: refused before any
		// work is done on the rest.
		head = func(b []byte) error { return checkContents(ci, f, b) }
	default:
		// Text files, small: checked whole before anything else.
		data, err := readExactly(r, size)
		if err != nil {
			return PutResult{}, err
		}
		if err := checkContents(ci, f, data); err != nil {
			return PutResult{}, err
		}
		r = bytes.NewReader(data)
	}
	m := Meta{Name: name, Kind: kindOf(f.Kind), SystemID: ci.SystemID, SegSize: ci.SegSize, Size: size}
	key := fileKey(ci.SystemID, f)
	res := PutResult{Key: key, Size: size}
	var sum *summarizer
	if f.Kind == pg.WALSegment && a.summaries {
		seg, err := f.SegNo(ci.SegSize)
		if err != nil {
			return res, &InvalidFileError{Name: name, Err: err}
		}
		sum = newSummarizer(f.Timeline, seg, ci.SegSize)
	}
	body, reused, err := a.encode(ctx, &m, r, head, ahead, sum)
	if err != nil {
		return res, err
	}
	defer a.bufs.Put(body)
	if _, err := a.EnsureCluster(ctx, ci); err != nil {
		return res, err
	}
	res, err = a.create(ctx, key, &m, body)
	res.Ahead = reused
	if err == nil {
		a.putSummary(ctx, ci.SystemID, f, &m, sum, &res)
	}
	if err == nil || !errors.Is(err, storage.ErrExists) {
		return res, err
	}
	// Already there: PostgreSQL pushes again after a crash, or the agent was
	// first. Identical contents are a success; anything else is refused
	// and the archived object stays as it is.
	have, err := a.get(ctx, key, expect{name: name, kind: m.Kind, cluster: ci.SystemID}, io.Discard)
	if err != nil {
		return res, err
	}
	if subtle.ConstantTimeCompare(have.MAC[:], m.MAC[:]) != 1 || have.Size != m.Size {
		return res, &ConflictError{Key: key, Name: name}
	}
	res.Created = false
	// A push that stopped between the segment and its summary left the
	// summary out: this one writes it.
	a.putSummary(ctx, ci.SystemID, f, &m, sum, &res)
	a.log.Debug("already archived with identical contents", "key", key)
	return res, nil
}

// readExactly reads size bytes from r and then expects the end. It holds
// only what r delivers, whatever size claims.
func readExactly(r io.Reader, size int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, size))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) != size {
		return nil, io.ErrUnexpectedEOF
	}
	if err := expectEOF(r, size); err != nil {
		return nil, err
	}
	return data, nil
}

// expectEOF checks that r, which delivered size bytes, has nothing more.
func expectEOF(r io.Reader, size int64) error {
	var one [1]byte
	for range 100 {
		n, err := r.Read(one[:])
		if n > 0 {
			return fmt.Errorf("the file has more than the %d bytes expected", size)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return io.ErrNoProgress
}

// CheckFile checks a file to archive against its name and the cluster:
// what Put refuses. A segment's first page must be a long header from the
// cluster (system identifier, segment size, page size) at the address its
// name denotes.
func CheckFile(ci ClusterInfo, f pg.WALFile, data []byte) error {
	if err := checkSize(ci, f, int64(len(data))); err != nil {
		return err
	}
	return checkContents(ci, f, data)
}

// checkSize is CheckFile's check of the file's size.
func checkSize(ci ClusterInfo, f pg.WALFile, size int64) error {
	name := f.Name()
	if size > MaxFileSize {
		return &InvalidFileError{Name: name, Err: fmt.Errorf("%d bytes is larger than any WAL file", size)}
	}
	switch {
	case f.Kind == pg.WALSegment && size != int64(ci.SegSize):
		return &InvalidFileError{Name: name, Err: fmt.Errorf("%d bytes, but the cluster's segments are %d", size, ci.SegSize)}
	case f.Kind == pg.WALPartialSegment && size > int64(ci.SegSize):
		return &InvalidFileError{Name: name, Err: fmt.Errorf("%d bytes, more than a segment of %d", size, ci.SegSize)}
	}
	return nil
}

// checkContents is the rest of CheckFile, on a file whose size passed
// checkSize. Of a segment it needs only the first page.
func checkContents(ci ClusterInfo, f pg.WALFile, data []byte) error {
	name := f.Name()
	switch f.Kind {
	case pg.WALSegment, pg.WALPartialSegment:
		h, err := pg.ParseSegmentHeader(data)
		if err != nil {
			return &InvalidFileError{Name: name, Err: err}
		}
		if err := h.CheckSystem(ci.SystemID); err != nil {
			return &ForeignError{Name: name, Reason: err.Error()}
		}
		if h.SegSize != ci.SegSize {
			return &ForeignError{Name: name, Reason: fmt.Sprintf("its header says %d-byte segments, the cluster has %d", h.SegSize, ci.SegSize)}
		}
		if ci.BlockSize != 0 && h.BlockSize != ci.BlockSize {
			return &ForeignError{Name: name, Reason: fmt.Sprintf("its header says %d-byte pages, the cluster has %d", h.BlockSize, ci.BlockSize)}
		}
		if err := h.CheckName(name); err != nil {
			return &InvalidFileError{Name: name, Err: err}
		}
	case pg.WALTimelineHistory:
		if err := checkHistory(f.Timeline, data); err != nil {
			return &InvalidFileError{Name: name, Err: err}
		}
	case pg.WALBackupHistory:
		if _, err := pg.ParseBackupLabel(data); err != nil {
			return &InvalidFileError{Name: name, Err: err}
		}
	default:
		return &InvalidFileError{Name: name, Err: errors.New("not a WAL archive file")}
	}
	return nil
}

// checkHistory applies the checks PostgreSQL itself makes when it reads
// the history file of timeline tli (readTimeLineHistory): each line that is
// not blank or a comment starts with a timeline and a switch point,
// timelines increase and stay below tli. It is deliberately no stricter:
// PostgreSQL writes histories whose switch points go backwards (a recovery
// along the newest timeline that stops before that timeline's branch
// point), and a history file PostgreSQL wrote must be archived as it is.
func checkHistory(tli pg.TimelineID, b []byte) error {
	var last uint64
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		fields := strings.Fields(line)
		n, err := strconv.ParseUint(fields[0], 10, 32)
		if err != nil {
			return fmt.Errorf("line %d: syntax error: %q is not a timeline", i+1, fields[0])
		}
		if len(fields) < 2 {
			return fmt.Errorf("line %d: expected a switch point after timeline %d", i+1, n)
		}
		if _, err := pg.ParseLSN(fields[1]); err != nil {
			return fmt.Errorf("line %d: %w", i+1, err)
		}
		if n <= last {
			return fmt.Errorf("line %d: timeline %d after %d: timelines must increase", i+1, n, last)
		}
		last = n
	}
	if last >= uint64(tli) {
		return fmt.Errorf("timeline %d in the history of timeline %d", last, tli)
	}
	return nil
}

// create uploads one encoded object, create-only.
func (a *Archive) create(ctx context.Context, key string, m *Meta, body *bytes.Buffer) (PutResult, error) {
	res := PutResult{Key: key, Size: m.Size, Stored: int64(body.Len())}
	if err := a.store.Create(ctx, key, bytes.NewReader(body.Bytes()), int64(body.Len())); err != nil {
		return res, err
	}
	res.Created = true
	return res, nil
}

// createBytes encodes data and creates the object, setting m.MAC.
func (a *Archive) createBytes(ctx context.Context, key string, m *Meta, data []byte) (PutResult, error) {
	body, _, err := a.encode(ctx, m, bytes.NewReader(data), nil, nil, nil)
	if err != nil {
		return PutResult{Key: key, Size: m.Size}, err
	}
	defer a.bufs.Put(body)
	return a.create(ctx, key, m, body)
}

// chunkSize is how much of a file one zstd frame holds: frames are
// compressed (and checked) in parallel, and a segment is on the critical
// path of archive_command. The zstd window is 1 MiB, so larger frames
// compress no better; 4 MiB frames made every upload in flight hold two
// or three 4 MiB chunks, which was a third of the agent's memory.
const chunkSize = 1 << 20

// windowSize is the zstd window the encoder uses.
const windowSize = 1 << 20

// encode reads a file of m.Size bytes from r (which must then end), sets
// m.MAC and returns the object (in a pooled buffer the caller puts back):
// the record frame and the compressed file, encrypted. head, if not nil,
// checks the file's first chunk before any work is done. With ahead, the
// file is cut into ahead.Piece-sized chunks, and a chunk equal to the bytes
// of its frame in ahead takes that frame; reused says how many did.
//
// The file is read a chunk at a time; the MAC is computed as it is read,
// and each chunk is compressed by a job that holds one of the CPU slots
// while the next chunk is read. At most max(2, GOMAXPROCS) chunks of one
// file are in memory; the compressed frames wait for the MAC, which leads
// the object. A summarizer, if given, reads every chunk as it comes. Each compressed frame is decompressed and compared with its
// chunk before anything is encrypted (a frame made ahead was, with the
// bytes it is compared with here), so an encoder fault can never be
// archived as a success.
func (a *Archive) encode(ctx context.Context, m *Meta, r io.Reader, head func([]byte) error, ahead *Ahead, sum *summarizer) (_ *bytes.Buffer, reused int, _ error) {
	piece := int64(chunkSize)
	if ahead.usable() {
		piece = int64(ahead.Piece)
	}
	n := max(1, int((m.Size+piece-1)/piece))
	frames := make([]*[]byte, n)
	borrowed := make([]bool, n) // frames[i] belongs to ahead
	errs := make([]error, n)
	var wg sync.WaitGroup
	defer func() {
		wg.Wait() // jobs own their chunk and frame until they end
		for i, f := range frames {
			if f != nil && !borrowed[i] {
				a.frames.put(f)
			}
		}
	}()
	inflight := make(chan struct{}, max(2, cap(a.slots)))
	slots := a.slots
	if m.Kind == KindPiece && m.Size <= chunkSize {
		slots = a.quick
	}
	h := macState(&a.mac, m)
	// While every piece so far took its frame, the MAC can start from the
	// last one's state instead of reading the pieces again.
	macAhead := ahead.usable()
	left := m.Size
	readErr := func() error {
		for i := range n {
			select {
			case inflight <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			cp := a.chunks.get()
			chunk := (*cp)[:min(left, piece)]
			if _, err := io.ReadFull(r, chunk); err != nil {
				a.chunks.put(cp)
				<-inflight
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
			if i == 0 && head != nil {
				if err := head(chunk); err != nil {
					a.chunks.put(cp)
					<-inflight
					return err
				}
			}
			left -= int64(len(chunk))
			if sum != nil {
				sum.Write(chunk)
			}
			fr := ahead.frame(i, chunk)
			var through *blake3.Hasher
			if macAhead && fr != nil {
				through = fr.macThrough(m)
			}
			if through != nil {
				h = through
			} else {
				macAhead = false
				h.Write(chunk)
			}
			if fr != nil {
				frames[i], borrowed[i] = &fr.comp, true
				reused++
				a.chunks.put(cp)
				<-inflight
				continue
			}
			if m.Kind == KindPiece && len(chunk) < rawPiece {
				fp := a.frames.get()
				*fp = appendRawFrame((*fp)[:0], chunk)
				frames[i] = fp
				a.chunks.put(cp)
				<-inflight
				continue
			}
			wg.Go(func() {
				defer func() {
					a.chunks.put(cp)
					<-inflight
				}()
				frames[i], errs[i] = a.compress(ctx, slots, chunk)
			})
		}
		return expectEOF(r, m.Size)
	}()
	wg.Wait()
	if readErr != nil {
		return nil, 0, readErr
	}
	total := 0
	for i := range n {
		if errs[i] != nil {
			return nil, 0, errs[i]
		}
		total += len(*frames[i])
	}
	h.Sum(m.MAC[:0])
	out := a.getBuf()
	out.Grow(total + 4096)
	var w io.WriteCloser
	enc, err := a.encrypterFor(m)
	if err == nil {
		w, err = enc.Encrypt(out)
	}
	if err == nil {
		_, err = w.Write(encodeFrame(m))
	}
	for i := 0; err == nil && i < n; i++ {
		_, err = w.Write(*frames[i])
		// Encrypted: the frame can serve another upload now, so that the
		// file is held about once, not compressed and encrypted both.
		if !borrowed[i] {
			a.frames.put(frames[i])
		}
		frames[i] = nil
	}
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		a.bufs.Put(out)
		return nil, 0, fmt.Errorf("encrypt %s: %w", m.Name, err)
	}
	return out, reused, nil
}

// compress compresses one chunk into a frame (from a.frames) and checks it,
// holding a CPU slot of slots (a.slots or a.quick).
func (a *Archive) compress(ctx context.Context, slots chan *workspace, chunk []byte) (*[]byte, error) {
	var ws *workspace
	select {
	case ws = <-slots:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { slots <- ws }()
	if ws == nil {
		ws = newWorkspace()
	}
	fp := a.frames.get()
	*fp = a.enc.EncodeAll(chunk, (*fp)[:0])
	if err := ws.verify(*fp, chunk); err != nil {
		a.frames.put(fp)
		return nil, err
	}
	return fp, nil
}

// rawPiece: a piece smaller than this is stored as a zstd frame of raw
// blocks, not compressed. A piece waits on the commit path, lives only
// until its segment is archived whole (compressed), and is a few KiB:
// compressing it and checking the result took a sixth of wal-receive's CPU
// (zstd prepares its tables for every frame) to save a few KiB of PUT.
const rawPiece = 64 << 10

// appendRawFrame appends to dst a zstd frame that stores data (1 to
// 4 GiB - 1 bytes) in raw blocks: a single-segment frame (the window is
// the content), its content size in the header, no checksum (RFC 8878,
// 3.1.1). Any zstd decoder reads it.
func appendRawFrame(dst, data []byte) []byte {
	const maxBlock = 128 << 10
	dst = binary.LittleEndian.AppendUint32(dst, 0xFD2FB528)
	n := len(data)
	switch {
	case n < 256: // Frame_Content_Size 1 byte: flag 0 with Single_Segment
		dst = append(dst, 0x20, byte(n))
	case n < 65536+256: // 2 bytes, minus 256
		dst = append(dst, 0x60)
		dst = binary.LittleEndian.AppendUint16(dst, uint16(n-256))
	default: // 4 bytes
		dst = append(dst, 0xA0)
		dst = binary.LittleEndian.AppendUint32(dst, uint32(n))
	}
	for len(data) > 0 {
		b := min(len(data), maxBlock)
		hdr := uint32(b) << 3 // Block_Type 0: raw
		if b == len(data) {
			hdr |= 1 // Last_Block
		}
		dst = append(dst, byte(hdr), byte(hdr>>8), byte(hdr>>16))
		dst = append(dst, data[:b]...)
		data = data[b:]
	}
	return dst
}

// workspace is what checking a compressed chunk needs, one per CPU slot.
type workspace struct {
	dec *zstd.Decoder
	buf []byte
}

func newWorkspace() *workspace {
	// Streaming with a small window: a few hundred KiB per slot, where
	// decoding whole chunks would need a chunk-sized buffer each.
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderMaxMemory(chunkSize+1))
	if err != nil {
		panic("walarchive: zstd decoder: " + err.Error()) // only bad options fail
	}
	return &workspace{dec: d, buf: make([]byte, 64<<10)}
}

// verify decompresses comp as a stream and compares it with data, without
// holding a second copy of the chunk.
func (ws *workspace) verify(comp, data []byte) error {
	d := ws.dec
	defer d.Reset(nil)
	if err := d.Reset(bytes.NewReader(comp)); err != nil {
		return err
	}
	off := 0
	for {
		n, err := d.Read(ws.buf)
		if n > 0 {
			if off+n > len(data) || !bytes.Equal(ws.buf[:n], data[off:off+n]) {
				return fmt.Errorf("compressed file does not decompress to the original at byte %d: not archived", off)
			}
			off += n
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("compressed file does not decompress: %w", err)
		}
	}
	if off != len(data) {
		return fmt.Errorf("compressed file decompresses to %d bytes, not %d: not archived", off, len(data))
	}
	return nil
}

// freeList keeps up to a bounded number of byte buffers for reuse.
type freeList struct {
	c    chan *[]byte
	size int // capacity of a new buffer
}

func newFreeList(keep, size int) freeList {
	return freeList{c: make(chan *[]byte, keep), size: size}
}

func (l freeList) get() *[]byte {
	select {
	case b := <-l.c:
		return b
	default:
		b := make([]byte, 0, l.size)
		return &b
	}
}

func (l freeList) put(b *[]byte) {
	select {
	case l.c <- b:
	default:
	}
}

func (a *Archive) getBuf() *bytes.Buffer {
	if b, ok := a.bufs.Get().(*bytes.Buffer); ok {
		b.Reset()
		return b
	}
	return new(bytes.Buffer)
}

// maxDecoded bounds a decoder's memory for a file of size bytes.
func maxDecoded(size int64) zstd.DOption {
	return zstd.WithDecoderMaxMemory(uint64(max(size, 1<<16)) + 1)
}

func (a *Archive) decoder() *zstd.Decoder {
	if d, ok := a.dec.Get().(*zstd.Decoder); ok {
		return d
	}
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderMaxMemory(MaxFileSize+1))
	if err != nil {
		panic("walarchive: zstd decoder: " + err.Error()) // only bad options fail
	}
	return d
}

// Get reads the archived file called name of cluster, verifies it and writes
// its contents to w. w sees the bytes before the last check (the MAC over
// all of them) has passed: publish nothing written to it unless Get returns
// nil. A file not in the archive is a *NotArchivedError, a damaged or
// swapped object a *CorruptError.
func (a *Archive) Get(ctx context.Context, cluster uint64, name string, w io.Writer) (Meta, error) {
	f, err := checkName(name)
	if err != nil {
		return Meta{}, err
	}
	return a.get(ctx, fileKey(cluster, f), expect{name: name, kind: kindOf(f.Kind), cluster: cluster}, w)
}

// ReadFile is Get into memory.
func (a *Archive) ReadFile(ctx context.Context, cluster uint64, name string) ([]byte, Meta, error) {
	var buf bytes.Buffer
	m, err := a.Get(ctx, cluster, name, &buf)
	if err != nil {
		return nil, m, err
	}
	return buf.Bytes(), m, nil
}

// expect is what an object must say about itself to be served under a key.
type expect struct {
	name    string
	kind    Kind
	cluster uint64
}

func (a *Archive) get(ctx context.Context, key string, want expect, w io.Writer) (Meta, error) {
	rc, err := a.store.Get(ctx, key)
	if errors.Is(err, storage.ErrNotFound) {
		return Meta{}, &NotArchivedError{Key: key, Name: want.name}
	}
	if err != nil {
		return Meta{}, err
	}
	defer rc.Close()
	return a.decodeFrom(ctx, key, rc, want, w)
}

// Decode reads one object's bytes from body (fetched from key), checks that
// it holds the file called name of cluster, and writes the file to w (see
// Get for when w's bytes may be used). Failures of body are returned as
// they are; anything wrong with the bytes is a *CorruptError naming key.
func (a *Archive) Decode(ctx context.Context, key string, body io.Reader, name string, cluster uint64, w io.Writer) (Meta, error) {
	want := expect{name: name, cluster: cluster}
	if name == MarkerName {
		want.kind = KindCluster
	} else if _, ok := ParsePieceName(name); ok {
		want.kind = KindPiece
	} else {
		f, err := checkName(name)
		if err != nil {
			return Meta{}, err
		}
		want.kind = kindOf(f.Kind)
	}
	return a.decodeFrom(ctx, key, body, want, w)
}

// decodeFrom is Decode of an object that must be what want says.
func (a *Archive) decodeFrom(ctx context.Context, key string, body io.Reader, want expect, w io.Writer) (Meta, error) {
	src := &trackingReader{r: body}
	m, err := a.decode(key, src, want, w)
	if err != nil {
		// A broken connection or a cancelled context is not corruption.
		if src.err != nil {
			return m, fmt.Errorf("read %s: %w", key, src.err)
		}
		if ctx.Err() != nil {
			return m, fmt.Errorf("read %s: %w", key, ctx.Err())
		}
	}
	return m, err
}

func (a *Archive) decode(key string, src io.Reader, want expect, w io.Writer) (Meta, error) {
	pr, err := a.crypt.Decrypt(src)
	if err != nil {
		var nm *age.NoIdentityMatchError
		if errors.As(err, &nm) {
			return Meta{}, corruptf(key, "not encrypted to this repository's identity")
		}
		return Meta{}, corruptf(key, "age header: %v", err)
	}
	br := bufio.NewReaderSize(pr, 64<<10)
	var hdr [frameHeaderSize]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return Meta{}, corruptf(key, "reading the record frame: %v", err)
	}
	n, err := frameSize(hdr[:])
	if err != nil {
		return Meta{}, corruptf(key, "%v", err)
	}
	rec := make([]byte, n)
	if _, err := io.ReadFull(br, rec); err != nil {
		return Meta{}, corruptf(key, "reading the record: %v", err)
	}
	m, err := decodeRecord(rec)
	if err != nil {
		return Meta{}, corruptf(key, "%v", err)
	}
	// An object moved or copied to another key, or another cluster's object,
	// would otherwise be replayed under this name.
	if m.Name != want.name || m.Kind != want.kind {
		return m, corruptf(key, "holds %s (%s), not %s", m.Name, m.Kind, want.name)
	}
	if m.SystemID != want.cluster {
		return m, corruptf(key, "holds WAL of system %d, not %d", m.SystemID, want.cluster)
	}
	d := a.decoder()
	defer func() {
		d.Reset(nil)
		a.dec.Put(d)
	}()
	// The record says how large the file is: the decoder must not allocate
	// for more, whatever a frame header claims.
	if err := d.ResetWithOptions(br, maxDecoded(m.Size)); err != nil {
		return m, corruptf(key, "zstd: %v", err)
	}
	h := macState(&a.mac, &m)
	wb := newWriteBehind(h, w, 256<<10)
	defer wb.close()
	var got int64
	for !wb.writeFailed() {
		buf := wb.buffer()
		k, rerr := d.Read(buf)
		got += int64(k)
		if got > m.Size {
			return m, corruptf(key, "holds more than the %d bytes its record says", m.Size)
		}
		wb.send(buf[:k])
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return m, corruptf(key, "decompress: %v", rerr)
		}
	}
	if err := wb.close(); err != nil {
		return m, fmt.Errorf("write %s from %s: %w", m.Name, key, err)
	}
	if got != m.Size {
		return m, corruptf(key, "holds %d bytes, its record says %d (truncated?)", got, m.Size)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	if subtle.ConstantTimeCompare(sum[:], m.MAC[:]) != 1 {
		return m, corruptf(key, "contents fail authentication (MAC mismatch)")
	}
	return m, nil
}

// trackingReader remembers the first error of the raw object body, so that
// a failed read of storage is told apart from bytes that fail a check.
type trackingReader struct {
	r   io.Reader
	err error
}

func (t *trackingReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF && t.err == nil {
		t.err = err
	}
	return n, err
}

// limitedWriter fails once more than n bytes are written.
type limitedWriter struct {
	w io.Writer
	n int64
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.n {
		return 0, errors.New("object larger than expected")
	}
	l.n -= int64(len(p))
	return l.w.Write(p)
}

// Verifier checks a file's bytes against the MAC in its record, for copies
// kept outside the archive (a restore's spool) after Get verified them once:
// whoever can write the copy cannot forge the MAC.
type Verifier struct {
	h    hashWriter
	want [32]byte
	size int64
	n    int64
}

type hashWriter interface {
	Write([]byte) (int, error)
	Sum([]byte) []byte
}

// NewVerifier starts checking a copy of the file m describes.
func (a *Archive) NewVerifier(m Meta) *Verifier {
	return &Verifier{h: macState(&a.mac, &m), want: m.MAC, size: m.Size}
}

// Write adds bytes of the copy.
func (v *Verifier) Write(p []byte) (int, error) {
	v.n += int64(len(p))
	return v.h.Write(p)
}

// OK reports whether the bytes written are exactly the file.
func (v *Verifier) OK() bool {
	var sum [32]byte
	v.h.Sum(sum[:0])
	return v.n == v.size && subtle.ConstantTimeCompare(sum[:], v.want[:]) == 1
}
