// Command etcd is etcd's own server at the version go.mod pins, built from a copy of
// go.etcd.io/etcd/server/v3 whose `// gofail:` comments tests/etcd/build.py rewrote
// with the pinned gofail (`gofail enable`) into failpoints. The blank import links
// gofail's runtime in either way, so GOFAIL_HTTP and GOFAIL_FAILPOINTS are read at start.
package main

import (
	"os"

	_ "go.etcd.io/gofail/runtime"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
