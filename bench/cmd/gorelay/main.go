// Command gorelay is the benchmark's floor for a reverse proxy written in
// Go. It relays HTTP/1.1 GET requests to one upstream over kept-alive
// connections and does nothing else: no authorization, signing, audit,
// header checks or caller identity — only what any Go proxy pays for
// (accept, read the request head, write it upstream, read the response
// head and its Content-Length body, write them back, all through Go's
// runtime poller). gpabench runs it beside nginx, so the agent's cost per
// request splits into what Go's runtime costs and what the agent's own
// work adds. It is not a general proxy: anything else (a body, chunked
// responses, HTTP/1.0) gets 501 or 502.
//
// Usage: gorelay -listen 127.0.0.1:8082 -upstream 169.254.169.254:80
package main

import (
	"flag"
	"log"
	"net"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8082", "address to listen on")
	upstream := flag.String("upstream", "", "upstream host:port (also sent as Host)")
	keep := flag.Int("keep", 64, "idle upstream connections kept")
	flag.Parse()
	if *upstream == "" {
		log.Fatal("gorelay: -upstream is required")
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(newRelay(*upstream, *keep).serve(l))
}
