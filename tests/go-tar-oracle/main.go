// Command go-tar-oracle lists a tar archive the way Go's archive/tar (what
// containerd unpacks layers with) sees it. It is the reference side of the
// differential test in crates/layer/tests/go_oracle.rs.
//
// Input: an uncompressed tar on stdin. Output: one line per entry, then END,
// or a line starting with ERROR at the first error (entries before it are
// still printed). Fields, space separated:
//
//	typeflag(hex) name(hex) linkname(hex) datalen sha256(data) mode&07777(octal)
//	uid gid uname(hex) gname(hex) mtime.nsec devmajor devminor [xattrs]
//
// Normalisations, mirroring documented choices of the Rust reader:
//   - 'g' (global PAX) headers are not printed: containerd ignores them.
//   - '7' (contiguous file) is printed as '0' (regular file).
//   - device numbers are printed only for char/block devices, else 0 0.
//   - xattrs are the PAXRecords with prefix SCHILY.xattr. (what containerd
//     applies, empty values included) as name=value hex pairs, sorted.
//   - datalen/sha256 are of the bytes actually read, not hdr.Size: Go reads no
//     data for header-only types whatever their size field says.
package main

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

func main() {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	// bufio hides os.Stdin's Seek method, so Go's discard() cannot seek past
	// the end of a regular file and mask truncation.
	tr := tar.NewReader(bufio.NewReader(os.Stdin))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
			fmt.Fprintf(out, "ERROR %v\n", err)
			return
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		h := sha256.New()
		n, err := io.Copy(h, tr)
		if err != nil {
			fmt.Fprintf(out, "ERROR data: %v\n", err)
			return
		}
		typ := hdr.Typeflag
		if typ == tar.TypeCont {
			typ = tar.TypeReg
		}
		var major, minor int64
		if typ == tar.TypeChar || typ == tar.TypeBlock {
			major, minor = hdr.Devmajor, hdr.Devminor
		}
		xattrs := []string{}
		for k, v := range hdr.PAXRecords {
			if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				xattrs = append(xattrs, hx(name)+"="+hx(v))
			}
		}
		sort.Strings(xattrs)
		fmt.Fprintf(out, "%02x %s %s %d %x %o %d %d %s %s %d.%09d %d %d [%s]\n",
			typ, hx(hdr.Name), hx(hdr.Linkname), n, h.Sum(nil), hdr.Mode&07777,
			hdr.Uid, hdr.Gid, hx(hdr.Uname), hx(hdr.Gname),
			hdr.ModTime.Unix(), hdr.ModTime.Nanosecond(), major, minor,
			strings.Join(xattrs, ","))
	}
	fmt.Fprintln(out, "END")
}

func hx(s string) string {
	if s == "" {
		return "-"
	}
	return hex.EncodeToString([]byte(s))
}
