package testenv

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"sort"
	"strings"
	"time"
)

// signAzure signs a body-less request with an Azure Storage shared key
// (the SharedKey scheme), enough for the container set-up tests need
// without pulling the SDK into every test binary.
func signAzure(req *http.Request, account, key string) error {
	secret, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		return err
	}
	req.Header.Set("x-ms-date", time.Now().UTC().Format(http.TimeFormat))
	req.Header.Set("x-ms-version", "2021-12-02")
	var xms []string
	for k := range req.Header {
		if lk := strings.ToLower(k); strings.HasPrefix(lk, "x-ms-") {
			xms = append(xms, lk)
		}
	}
	sort.Strings(xms)
	var b strings.Builder
	b.WriteString(req.Method + "\n")
	for _, h := range []string{"Content-Encoding", "Content-Language", "Content-Length", "Content-MD5", "Content-Type",
		"Date", "If-Modified-Since", "If-Match", "If-None-Match", "If-Unmodified-Since", "Range"} {
		b.WriteString(req.Header.Get(h) + "\n")
	}
	for _, h := range xms {
		b.WriteString(h + ":" + req.Header.Get(h) + "\n")
	}
	b.WriteString("/" + account + req.URL.EscapedPath())
	q := req.URL.Query()
	var names []string
	for k := range q {
		names = append(names, strings.ToLower(k))
	}
	sort.Strings(names)
	for _, k := range names {
		b.WriteString("\n" + k + ":" + strings.Join(q[k], ","))
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(b.String()))
	req.Header.Set("Authorization", "SharedKey "+account+":"+base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	return nil
}
