// Command echo is the benchmark's compiled echo backend: a WebSocket server that sends
// every data frame back with its own opcode and FIN bit, answers a ping with a pong, and
// answers a Close with the same code, then closes TCP first (RFC 6455 §7.1.1). Standard
// library only. It prints "READY <port>" once it listens.
//
// It exists so that the backend takes as little as possible of the CPU that it shares
// with the load client (bench/echo_fast.py, the picows backend, is the fallback).
package main

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
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
