// Command gorelay is the benchmark's floor for a reverse proxy written in
// Go. It relays HTTP/1.1 GET requests to one upstream over kept-alive
// connections and does nothing else: no authorization, signing, audit,
// header checks or caller identity — only what any Go proxy pays for
// (accept, read the request head, write it upstream, read the response
// head and its Content-Length body, write them back, all through Go's
// runtime poller). gpabench runs it beside nginx, so the agent's cost per
// request splits into what Go's runtime costs and what the agent's own
// work adds. It is not a general proxy: anything else (a body, chunked
// responses, HTTP/1.0) gets 501 or 502. With -raw it makes its socket
// calls as the agent does (package rawio: raw accept, reads, writes and
// close inside Go's poller), the floor for the agent's own I/O.
//
// Usage: gorelay -listen 127.0.0.1:8082 -upstream 169.254.169.254:80 [-raw]
package main

import (
	"flag"
	"log"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8082", "address to listen on")
	upstream := flag.String("upstream", "", "upstream host:port (also sent as Host)")
	keep := flag.Int("keep", 64, "idle upstream connections kept")
	raw := flag.Bool("raw", false, "make socket calls as the agent does (package rawio) instead of through the net package")
	flag.Parse()
	if *upstream == "" {
		log.Fatal("gorelay: -upstream is required")
	}
	r := newRelay(*upstream, *keep, *raw)
	l, err := r.listen(*listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(r.serve(l))
}
