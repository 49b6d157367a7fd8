package keykeeper

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/opengpa/gpa/proxyagent/hostconn"
	"github.com/opengpa/gpa/proxyagent/msp"
)

// hostClient makes the three secure-channel calls of protocol.md §1.1
// through a hostconn.Client (fresh connection each, the common headers,
// exactly the bytes signed), adding the Metadata header upstream sends on
// them.
type hostClient struct {
	c *hostconn.Client
}

// do sends one secure-channel request: the common headers, Metadata,
// content-type when given, content-length; key, when not nil, signs it.
func (c *hostClient) do(ctx context.Context, method, target, contentType string, body []byte, key *msp.Key) (*hostconn.Response, error) {
	fields := []msp.Field{{Name: msp.HeaderMetadata, Value: msp.MetadataHeaderValue}}
	if contentType != "" {
		fields = append(fields, msp.Field{Name: "content-type", Value: contentType})
	}
	return c.c.Do(ctx, method, target, fields, body, key)
}

// status performs GET /secure-channel/status: any 2xx is success.
func (c *hostClient) status(ctx context.Context) (*hostconn.Response, error) {
	r, err := c.do(ctx, http.MethodGet, msp.StatusPath, "", nil, nil)
	if err != nil {
		return nil, err
	}
	if !r.OK() {
		return nil, fmt.Errorf("GET %s returned status %d", msp.StatusPath, r.Code)
	}
	return r, nil
}

// acquire performs POST /secure-channel/key: exactly 200 is success.
func (c *hostClient) acquire(ctx context.Context) (*msp.IssuedKey, error) {
	r, err := c.do(ctx, http.MethodPost, msp.KeyPath, "application/json", []byte(msp.KeyRequestBody), nil)
	if err != nil {
		return nil, err
	}
	if r.Code != http.StatusOK {
		return nil, fmt.Errorf("POST %s returned status %d", msp.KeyPath, r.Code)
	}
	body, err := decodeBody(r.Header.Get("Content-Type"), r.Body)
	if err != nil {
		return nil, err
	}
	return msp.ParseIssuedKey(body)
}

// attest performs the signed POST /secure-channel/key/<guid>/key-attestation:
// exactly 200 is success; the body is ignored.
func (c *hostClient) attest(ctx context.Context, key *msp.Key) error {
	target := fmt.Sprintf(msp.AttestationPathFormat, key.GUID)
	r, err := c.do(ctx, http.MethodPost, target, "", nil, key)
	if err != nil {
		return err
	}
	if r.Code != http.StatusOK {
		return fmt.Errorf("POST %s returned status %d", target, r.Code)
	}
	return nil
}

// decodeBody turns a JSON response body into UTF-8 (hostconn.DecodeCharset).
// An XML body is an error here: every secure-channel answer is JSON.
func decodeBody(contentType string, body []byte) ([]byte, error) {
	if hostconn.IsXML(contentType) {
		return nil, errors.New("unexpected XML response body")
	}
	return hostconn.DecodeCharset(contentType, body)
}
