// Command echo is the benchmark's compiled echo backend: a WebSocket server that sends
// every data frame back with its own opcode and FIN bit, answers a ping with a pong, and
// answers a Close with the same code, then closes TCP first (RFC 6455 §7.1.1). Standard
// library only. It prints "READY <port>" once it listens.
//
// A request that is not an upgrade is answered with 200 and a fixed 1 KiB body, and the
// connection is kept alive for the next request (the HTTP rows of `make bench`).
//
// It exists so that the backend takes as little as possible of the CPU that it shares
// with the load client (bench/echo_fast.py, the picows backend, is the fallback).
package main

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 0, "port (0: any free port)")
	flag.Parse()
	ln, err := net.Listen("tcp", net.JoinHostPort(*host, fmt.Sprint(*port)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	fmt.Printf("READY %d\n", ln.Addr().(*net.TCPAddr).Port)
	for {
		conn, err := ln.Accept()
		if err != nil {
			time.Sleep(10 * time.Millisecond) // e.g. out of file descriptors for a moment
			continue
		}
		go serve(conn)
	}
}

func serve(conn net.Conn) {
	defer conn.Close()
	reader := bufio.NewReaderSize(conn, 4096)
	request, err := http.ReadRequest(reader)
	if err != nil {
		return
	}
	if request.Header.Get("Upgrade") == "" {
		serveHTTP(conn, reader, request)
		return
	}
	key := request.Header.Get("Sec-WebSocket-Key")
	if !strings.EqualFold(request.Header.Get("Upgrade"), "websocket") || key == "" {
		io.WriteString(conn, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		return
	}
	sum := sha1.Sum([]byte(key + acceptGUID))
	io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"+
		"Connection: Upgrade\r\nSec-WebSocket-Accept: "+
		base64.StdEncoding.EncodeToString(sum[:])+"\r\n\r\n")
	echo(conn, reader)
}

// response is the whole answer to every plain request: a head and a 1 KiB body, one write.
var response = func() []byte {
	body := strings.Repeat("wslb-bench 1 KiB body, the same bytes for every request.\n", 18)
	body = body[:1023] + "\n"
	return []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " +
		fmt.Sprint(len(body)) + "\r\n\r\n" + body)
}()

// serveHTTP answers plain requests on one keep-alive connection until the client closes it,
// asks to close, or sends what this reader does not handle (a chunked body, a bad head).
// Only the first request goes through net/http's parser; the next ones are read line by
// line without allocating, so that the backend costs its shared CPU as little as it can.
func serveHTTP(conn net.Conn, reader *bufio.Reader, request *http.Request) {
	if _, err := io.Copy(io.Discard, request.Body); err != nil {
		return
	}
	closing := request.Close
	for {
		if _, err := conn.Write(response); err != nil || closing {
			return
		}
		var body int64
		var ok bool
		if body, closing, ok = readHead(reader); !ok {
			return
		}
		if _, err := reader.Discard(int(body)); err != nil {
			return
		}
	}
}

// readHead reads one request head; it returns the body's Content-Length, whether the
// client asked to close, and false for anything else (EOF, chunked, a malformed line).
func readHead(reader *bufio.Reader) (int64, bool, bool) {
	var length int64
	closing, first := false, true
	for {
		line, err := reader.ReadSlice('\n')
		if err != nil || len(line) < 2 || line[len(line)-2] != '\r' {
			return 0, false, false
		}
		line = line[:len(line)-2]
		if first {
			if !bytes.HasSuffix(line, []byte(" HTTP/1.1")) {
				return 0, false, false
			}
			first = false
			continue
		}
		if len(line) == 0 {
			return length, closing, true
		}
		name, value, found := bytes.Cut(line, []byte(":"))
		if !found {
			return 0, false, false
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("content-length")):
			if length, err = strconv.ParseInt(string(value), 10, 64); err != nil || length < 0 || length > 1<<30 {
				return 0, false, false
			}
		case bytes.EqualFold(name, []byte("transfer-encoding")):
			return 0, false, false
		case bytes.EqualFold(name, []byte("connection")):
			closing = bytes.Contains(bytes.ToLower(value), []byte("close"))
		}
	}
}

// echo relays frames back until a Close or an error. Server frames are never masked.
func echo(conn net.Conn, reader *bufio.Reader) {
	const room = 10 // the longest unmasked header
	var head [14]byte
	buf := make([]byte, room+4096)
	for {
		if _, err := io.ReadFull(reader, head[:2]); err != nil {
			return
		}
		first, masked, length := head[0], head[1]&0x80 != 0, uint64(head[1]&0x7f)
		switch length {
		case 126:
			if _, err := io.ReadFull(reader, head[:2]); err != nil {
				return
			}
			length = uint64(binary.BigEndian.Uint16(head[:2]))
		case 127:
			if _, err := io.ReadFull(reader, head[:8]); err != nil {
				return
			}
			length = binary.BigEndian.Uint64(head[:8])
		}
		if length > 64<<20 {
			return
		}
		var mask [4]byte
		if masked {
			if _, err := io.ReadFull(reader, mask[:]); err != nil {
				return
			}
		}
		if need := room + int(length); need > len(buf) {
			buf = make([]byte, need)
		}
		payload := buf[room : room+int(length)]
		if _, err := io.ReadFull(reader, payload); err != nil {
			return
		}
		if masked {
			unmask(payload, mask)
		}
		opcode := first & 0x0f
		switch opcode {
		case 0x0, 0x1, 0x2: // data: echo as is
		case 0x9: // ping: pong
			first = 0x80 | 0xA
		case 0x8: // close: answer with the same payload, then close TCP
			conn.Write(frame(buf, first, len(payload)))
			return
		default: // pong and unknown control frames: nothing to send
			continue
		}
		if _, err := conn.Write(frame(buf, first, len(payload))); err != nil {
			return
		}
	}
}

// frame writes an unmasked header just before the payload at buf[10:] and returns the frame.
func frame(buf []byte, first byte, n int) []byte {
	first &= 0x8f // FIN and opcode; no RSV bits
	switch {
	case n < 126:
		buf[8], buf[9] = first, byte(n)
		return buf[8 : 10+n]
	case n < 1<<16:
		buf[6], buf[7] = first, 126
		binary.BigEndian.PutUint16(buf[8:10], uint16(n))
		return buf[6 : 10+n]
	default:
		buf[0], buf[1] = first, 127
		binary.BigEndian.PutUint64(buf[2:10], uint64(n))
		return buf[0 : 10+n]
	}
}

func unmask(payload []byte, mask [4]byte) {
	key := uint64(binary.LittleEndian.Uint32(mask[:]))
	key |= key << 32
	i := 0
	for ; i+8 <= len(payload); i += 8 {
		binary.LittleEndian.PutUint64(payload[i:], binary.LittleEndian.Uint64(payload[i:])^key)
	}
	for ; i < len(payload); i++ {
		payload[i] ^= mask[i&3]
	}
}
