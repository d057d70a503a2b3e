package nodeagent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// serverHeader imitates nginx's so that tools and tests written against a
// real nginx image see a familiar reply, while saying who really answered.
const serverHeader = "nginx/1.27.0 (meridian-lab)"

// httpIdleTimeout closes idle keep-alive connections like nginx's default
// keepalive_timeout. Echo connections have no timeout: a `nc` session may
// sit idle as long as its user likes.
const httpIdleTimeout = 75 * time.Second

// podIdentity is what a stand-in server says about the pod it serves.
type podIdentity struct {
	Name      string
	Namespace string
	Node      string
	IP        string
}

// page is the body of every HTTP reply.
func (id podIdentity) page() string {
	return fmt.Sprintf("Hello from %s (namespace %s, node %s, IP %s)\n", id.Name, id.Namespace, id.Node, id.IP)
}

// connMode is what a TCP connection turned out to carry.
type connMode int

const (
	modeUndecided connMode = iota
	modeHTTP
	modeEcho
)

// httpMethods are the request lines that make a connection HTTP. Anything
// else is echoed, so `nc` and iperf-like probes get their bytes back.
var httpMethods = [][]byte{[]byte("GET "), []byte("HEAD ")}

// classify decides from the first bytes of a connection whether it is HTTP.
// It returns modeUndecided while prefix could still become a request line.
func classify(prefix []byte) connMode {
	undecided := false
	for _, m := range httpMethods {
		n := min(len(prefix), len(m))
		if !bytes.Equal(prefix[:n], m[:n]) {
			continue
		}
		if n == len(m) {
			return modeHTTP
		}
		undecided = true
	}
	if undecided {
		return modeUndecided
	}
	return modeEcho
}

// serveConn answers one TCP connection until the peer closes it, the
// connection fails or it is closed from outside (on shutdown). A request
// line of GET or HEAD starts HTTP; any other data is echoed back.
func serveConn(conn net.Conn, id podIdentity) error {
	br := bufio.NewReader(conn)
	// Peek one more byte at a time: the peer of an echo session may send
	// fewer bytes than a request line and wait for them to come back.
	mode := modeUndecided
	for n := 1; mode == modeUndecided; {
		prefix, err := br.Peek(n)
		if err != nil {
			if len(prefix) > 0 {
				// The peer half-closed after a short write: echo what came.
				_, werr := conn.Write(prefix)
				return ignoreClosed(werr)
			}
			return ignoreClosed(err)
		}
		buffered, _ := br.Peek(br.Buffered())
		mode = classify(buffered)
		n = len(buffered) + 1
	}
	if mode == modeEcho {
		_, err := io.Copy(conn, br)
		return ignoreClosed(err)
	}
	return serveHTTP(conn, br, id)
}

// serveHTTP answers requests on one connection, keeping it open between
// requests as HTTP/1.1 allows (HTTP/1.0 only when asked for keep-alive).
func serveHTTP(conn net.Conn, br *bufio.Reader, id podIdentity) error {
	bw := bufio.NewWriter(conn)
	for {
		if err := conn.SetReadDeadline(time.Now().Add(httpIdleTimeout)); err != nil {
			return ignoreClosed(err)
		}
		req, err := http.ReadRequest(br)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isTimeout(err) {
				return nil
			}
			if isClosed(err) {
				return nil
			}
			writeResponse(bw, http.StatusBadRequest, "close", false, "bad request\n", nil)
			return ignoreClosed(bw.Flush())
		}
		// A GET may carry a body; read it so the next request line is found.
		_, _ = io.Copy(io.Discard, req.Body)
		_ = req.Body.Close()

		connHdr := "keep-alive"
		if req.Close {
			connHdr = "close"
		}
		switch req.Method {
		case http.MethodGet, http.MethodHead:
			// The client's address as this pod sees it, for tests of
			// source NAT (externalTrafficPolicy Local keeps it, Cluster
			// masquerades); the body stays what nginx-like pages show.
			writeResponse(bw, http.StatusOK, connHdr, req.Method == http.MethodHead, id.page(),
				[][2]string{{"X-Client-Address", conn.RemoteAddr().String()}})
		default:
			writeResponse(bw, http.StatusMethodNotAllowed, connHdr, false, "method not allowed\n",
				[][2]string{{"Allow", "GET, HEAD"}})
		}
		if err := bw.Flush(); err != nil {
			return ignoreClosed(err)
		}
		if req.Close {
			return nil
		}
	}
}

// writeResponse writes a whole response the way nginx lays it out. For HEAD
// the headers describe the body that a GET would have returned.
func writeResponse(w *bufio.Writer, code int, connection string, head bool, body string, extra [][2]string) {
	fmt.Fprintf(w, "HTTP/1.1 %d %s\r\n", code, http.StatusText(code))
	fmt.Fprintf(w, "Server: %s\r\n", serverHeader)
	fmt.Fprintf(w, "Date: %s\r\n", time.Now().UTC().Format(http.TimeFormat))
	fmt.Fprintf(w, "Content-Type: text/plain\r\n")
	fmt.Fprintf(w, "Content-Length: %s\r\n", strconv.Itoa(len(body)))
	fmt.Fprintf(w, "Connection: %s\r\n", connection)
	for _, h := range extra {
		fmt.Fprintf(w, "%s: %s\r\n", h[0], h[1])
	}
	fmt.Fprintf(w, "\r\n")
	if !head {
		w.WriteString(body)
	}
}

// serveUDP echoes every datagram back to its sender until pc is closed.
func serveUDP(pc net.PacketConn) error {
	buf := make([]byte, 65535)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return ignoreClosed(err)
		}
		if _, err := pc.WriteTo(buf[:n], addr); err != nil && isClosed(err) {
			return nil
		}
	}
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ignoreClosed drops the errors that only say the connection ended.
func ignoreClosed(err error) error {
	if err == nil || isClosed(err) || errors.Is(err, io.EOF) {
		return nil
	}
	return err
}
