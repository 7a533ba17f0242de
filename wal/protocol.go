package wal

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"time"

	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/repo/walarchive"
	"github.com/tidemarkdb/tidemark/storage"
)

// The agent protocol: one request per connection on the agent's Unix stream
// socket. The client writes one JSON object and a newline; the agent answers
// with one JSON object and a newline once it has a verdict, then closes.
//
//	-> {"v":1,"op":"push","name":"000000010000000000000003","pgdata":"/var/lib/postgresql/17/main"}
//	<- {"ok":true,"result":"created"}
//	<- {"ok":false,"kind":"conflict","error":"a different 0000000100000000000000003 is already archived at ..."}
//
// "ok":true comes only once the file is durable in the repository. op "ping"
// answers {"ok":true,"pgdata":...,"cluster":...} without doing anything.
const (
	// ProtocolVersion is the "v" of requests this build sends and accepts.
	ProtocolVersion = 1
	// maxMessage bounds a request or answer line.
	maxMessage = 4 << 10
)

// Request is what wal-push asks the agent.
type Request struct {
	V      int    `json:"v"`
	Op     string `json:"op"`               // "push" or "ping"
	Name   string `json:"name,omitempty"`   // file name in pg_wal, for push
	PGData string `json:"pgdata,omitempty"` // the client's data directory
	// Stores names the repositories the client archives to (repo, then
	// repo2); an agent that archives to others answers KindInvalid, so
	// that the client uploads itself rather than take the agent's word for
	// a repository it does not write. Absent: not checked.
	Stores []string `json:"stores,omitempty"`
}

// Response is the agent's answer.
type Response struct {
	OK bool `json:"ok"`
	// Result of a push: "created" (uploaded now), "exists" (an identical
	// object was already archived) or "durable" (this agent archived it
	// before).
	Result string `json:"result,omitempty"`
	// Kind of a failure: one of the Kind* constants.
	Kind  string `json:"kind,omitempty"`
	Error string `json:"error,omitempty"`
	// ping
	PGData  string `json:"pgdata,omitempty"`
	Cluster uint64 `json:"cluster,omitempty,string"`
}

// Failure kinds in a Response.
const (
	KindConflict = "conflict" // a different file is archived under the name
	KindForeign  = "foreign"  // the file belongs to another cluster
	KindInvalid  = "invalid"  // the file is not what its name says, or the request is malformed
	KindCorrupt  = "corrupt"  // the archived object under the name is corrupt
	KindStorage  = "storage"  // the store kept failing for the agent's whole retry budget
	KindPGData   = "pgdata"   // the agent serves another data directory
	KindMissing  = "missing"  // the file is not in the agent's pg_wal
	KindShutdown = "shutdown" // the agent is stopping
	KindInternal = "internal"
)

// AgentError is a failure the agent reported.
type AgentError struct {
	Kind string
	Msg  string
}

func (e *AgentError) Error() string { return fmt.Sprintf("agent: %s", e.Msg) }

// Definitive reports whether the agent's verdict is one the client's own
// upload would only repeat: the store failed for the agent's whole retry
// budget. Anything else (a conflict, a bad file, a stopping agent) is
// checked again by the client itself, so that the verdict that reaches
// PostgreSQL is always from this process's own, complete checks.
func (e *AgentError) Definitive() bool { return e.Kind == KindStorage }

// errorKind classifies an error for a Response.
func errorKind(err error) string {
	switch {
	case errors.Is(err, walarchive.ErrConflict):
		return KindConflict
	case errors.Is(err, walarchive.ErrForeign), errors.Is(err, repo.ErrSecretMismatch):
		return KindForeign
	case errors.Is(err, walarchive.ErrInvalidFile), errors.Is(err, ErrFileChanged):
		return KindInvalid
	case errors.Is(err, walarchive.ErrCorrupt):
		return KindCorrupt
	case errors.Is(err, context.Canceled):
		return KindShutdown
	case errors.Is(err, fs.ErrNotExist):
		return KindMissing
	}
	var se *storage.Error
	if errors.As(err, &se) {
		return KindStorage
	}
	return KindInternal
}

// ErrAgentUnreachable: no agent listens on the socket.
var ErrAgentUnreachable = errors.New("no agent is listening")

// AskAgent sends one request to the agent on socket and waits up to wait
// for the answer. An agent that is not running is ErrAgentUnreachable; a
// failure it reports is an *AgentError.
func AskAgent(ctx context.Context, socket string, req Request, wait time.Duration) (Response, error) {
	req.V = ProtocolVersion
	d := net.Dialer{Timeout: 2 * time.Second}
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return Response{}, fmt.Errorf("agent socket %s: %w: %v", socket, ErrAgentUnreachable, err)
	}
	defer conn.Close()
	deadline := time.Now().Add(wait)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	b, err := json.Marshal(req)
	if err != nil {
		return Response{}, err
	}
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return Response{}, fmt.Errorf("agent socket %s: %w", socket, err)
	}
	line, err := bufio.NewReaderSize(conn, maxMessage).ReadSlice('\n')
	if err != nil {
		if ctx.Err() != nil {
			return Response{}, ctx.Err()
		}
		return Response{}, fmt.Errorf("agent socket %s: no answer: %w", socket, err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return Response{}, fmt.Errorf("agent socket %s: bad answer: %w", socket, err)
	}
	if !resp.OK {
		return resp, &AgentError{Kind: resp.Kind, Msg: resp.Error}
	}
	return resp, nil
}
