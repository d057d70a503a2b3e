package nodeagent

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var testID = podIdentity{Name: "web-7d9f-abcde", Namespace: "default", Node: "node-1", IP: "10.244.1.5"}

const wantPage = "Hello from web-7d9f-abcde (namespace default, node node-1, IP 10.244.1.5)\n"

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want connMode
	}{
		{"G", modeUndecided},
		{"GE", modeUndecided},
		{"GET", modeUndecided},
		{"GET ", modeHTTP},
		{"GET /x HTTP/1.1", modeHTTP},
		{"H", modeUndecided},
		{"HEA", modeUndecided},
		{"HEAD ", modeHTTP},
		{"GETX", modeEcho},
		{"HELLO", modeEcho},
		{"POST / HTTP/1.1", modeEcho},
		{"get / HTTP/1.1", modeEcho},
		{"x", modeEcho},
		{"\x00\x01", modeEcho},
	} {
		if got := classify([]byte(tc.in)); got != tc.want {
			t.Errorf("classify(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// pipeConn serves one end of a net.Pipe and returns the other and a
// function that waits (up to 5 s) for serveConn to return its result.
func pipeConn(t *testing.T) (net.Conn, func() (error, bool)) {
	t.Helper()
	server, client := net.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- serveConn(server, testID)
		server.Close()
	}()
	var (
		once     sync.Once
		result   error
		returned bool
	)
	wait := func() (error, bool) {
		once.Do(func() {
			select {
			case result = <-done:
				returned = true
			case <-time.After(5 * time.Second):
			}
		})
		return result, returned
	}
	t.Cleanup(func() {
		client.Close()
		if _, ok := wait(); !ok {
			t.Error("serveConn did not return after the client closed")
		}
	})
	if err := client.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	return client, wait
}

func TestHTTPGetKeepAliveThenHeadClose(t *testing.T) {
	client, done := pipeConn(t)
	br := bufio.NewReader(client)

	go io.WriteString(client, "GET /index.html HTTP/1.1\r\nHost: web\r\nUser-Agent: curl/8\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || string(body) != wantPage {
		t.Fatalf("GET: %d %q, want 200 %q", resp.StatusCode, body, wantPage)
	}
	for h, want := range map[string]string{
		"Server":         serverHeader,
		"Content-Type":   "text/plain",
		"Content-Length": strconv.Itoa(len(wantPage)),
		"Connection":     "keep-alive",
	} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("GET header %s = %q, want %q", h, got, want)
		}
	}
	if _, err := http.ParseTime(resp.Header.Get("Date")); err != nil {
		t.Errorf("GET Date header: %v", err)
	}
	if !strings.HasPrefix(resp.Header.Get("Server"), "nginx/") {
		t.Errorf("Server header %q does not look like nginx's", resp.Header.Get("Server"))
	}

	// Same connection: HEAD with Connection: close gets headers only and
	// the server ends the connection.
	go io.WriteString(client, "HEAD / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
	resp, err = http.ReadResponse(br, &http.Request{Method: http.MethodHead})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !resp.Close ||
		resp.Header.Get("Content-Length") != strconv.Itoa(len(wantPage)) {
		t.Fatalf("HEAD: %d %v", resp.StatusCode, resp.Header)
	}
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != 0 {
		t.Fatalf("HEAD reply carried %d body bytes: %q", len(rest), rest)
	}
	if err, ok := done(); !ok || err != nil {
		t.Fatalf("server kept the connection after Connection: close (returned %v, err %v)", ok, err)
	}
}

func TestHTTP10ClosesByDefault(t *testing.T) {
	client, _ := pipeConn(t)
	go io.WriteString(client, "GET / HTTP/1.0\r\n\r\n")
	br := bufio.NewReader(client)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	// net/http turns "Connection: close" into resp.Close.
	if !resp.Close {
		t.Errorf("HTTP/1.0 reply without Connection: close: %v", resp.Header)
	}
	if b, _ := io.ReadAll(br); string(b) != wantPage {
		t.Errorf("body %q, want %q", b, wantPage)
	}
}

func TestHTTPOtherMethodOnKeepAlive(t *testing.T) {
	client, _ := pipeConn(t)
	br := bufio.NewReader(client)
	go io.WriteString(client, "GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
	for i, want := range []int{http.StatusOK, http.StatusMethodNotAllowed} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != want {
			t.Errorf("response %d: status %d, want %d", i, resp.StatusCode, want)
		}
	}
}

func TestHTTPMalformedRequest(t *testing.T) {
	client, done := pipeConn(t)
	go io.WriteString(client, "GET garbage\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(client), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Errorf("got %d close=%v, want 400 with Connection: close", resp.StatusCode, resp.Close)
	}
	io.Copy(io.Discard, resp.Body)
	if _, ok := done(); !ok {
		t.Fatal("connection not closed after a bad request")
	}
}

func TestEchoShortAndSplitData(t *testing.T) {
	client, _ := pipeConn(t)
	// Three bytes that match no request line: echoed at once, although a
	// request line would be longer.
	go io.WriteString(client, "hi\n")
	buf := make([]byte, 3)
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "hi\n" {
		t.Fatalf("echo of %q: %q %v", "hi\n", buf, err)
	}
	// Once echoing, data that looks like HTTP is echoed too.
	go io.WriteString(client, "GET / HTTP/1.1\r\n")
	buf = make([]byte, 16)
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "GET / HTTP/1.1\r\n" {
		t.Fatalf("echo after switch: %q %v", buf, err)
	}
}

func TestEchoPrefixOfMethodArrivingInPieces(t *testing.T) {
	client, _ := pipeConn(t)
	// "HE" could start "HEAD ": the server must wait for more, then echo
	// all of it once "LLO" rules HTTP out.
	if _, err := io.WriteString(client, "HE"); err != nil {
		t.Fatal(err)
	}
	go io.WriteString(client, "LLO")
	buf := make([]byte, 5)
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "HELLO" {
		t.Fatalf("echo: %q %v", buf, err)
	}
}
