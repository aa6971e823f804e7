module erofs-snapshotter/tests/go-tar-oracle

go 1.24
