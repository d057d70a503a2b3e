package lab

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	audit "k8s.io/apiserver/pkg/apis/audit/v1"
)

// The API server writes an audit log of every request Meridian's service
// account makes (logs/audit.log, metadata only). A request the chart's RBAC
// refuses is a 403 there, whichever code path made it and whether or not
// meridiand logged it; ForbiddenRequests lists them, and the tests fail on
// any.

func (s layout) auditPolicyFile() string { return s.path("audit-policy.yaml") }
func (s layout) auditLog() string        { return s.path("logs", "audit.log") }

// MeridianUser is the user meridiand authenticates as: the chart's
// service account.
var MeridianUser = "system:serviceaccount:" + ReleaseNamespace + ":" + ServiceAccountName

// auditPolicy logs the metadata (who, what, the response code) of
// MeridianUser's requests and nothing else.
func auditPolicy() string {
	return `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    users: ["` + MeridianUser + `"]
  - level: None
`
}

func writeAuditPolicy(path string) error {
	if err := os.WriteFile(path, []byte(auditPolicy()), 0o644); err != nil {
		return fmt.Errorf("write audit policy: %w", err)
	}
	return nil
}

// Request is one audited API request.
type Request struct {
	User       string
	Verb       string
	Resource   string // group/resource[/subresource], "" group for core
	Namespace  string
	Name       string
	Code       int32
	Message    string
	RequestURI string
	Time       time.Time
}

func (r Request) String() string {
	obj := r.Resource
	if r.Namespace != "" {
		obj += " in " + r.Namespace
	}
	if r.Name != "" {
		obj += " named " + r.Name
	}
	return fmt.Sprintf("%s %s %s: %d %s", r.User, r.Verb, obj, r.Code, r.Message)
}

// ForbiddenRequests are the requests of user the API server refused with
// 403 Forbidden, from the audit log.
func (l *Lab) ForbiddenRequests(user string) ([]Request, error) {
	reqs, err := l.AuditedRequests()
	if err != nil {
		return nil, err
	}
	var out []Request
	for _, r := range reqs {
		if r.User == user && r.Code == 403 {
			out = append(out, r)
		}
	}
	return out, nil
}

// AuditedRequests reads the audit log: MeridianUser's finished requests.
func (l *Lab) AuditedRequests() ([]Request, error) {
	f, err := os.Open(l.layout.auditLog())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	defer f.Close()
	var out []Request
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var ev audit.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			continue // a line cut by rotation
		}
		if ev.Stage != audit.StageResponseComplete && ev.Stage != audit.StagePanic {
			continue
		}
		r := Request{User: ev.User.Username, Verb: ev.Verb, RequestURI: ev.RequestURI, Time: ev.StageTimestamp.Time}
		if o := ev.ObjectRef; o != nil {
			res := o.Resource
			if o.Subresource != "" {
				res += "/" + o.Subresource
			}
			r.Resource = strings.TrimPrefix(o.APIGroup+"/"+res, "/")
			r.Namespace, r.Name = o.Namespace, o.Name
		}
		if ev.ResponseStatus != nil {
			r.Code, r.Message = ev.ResponseStatus.Code, ev.ResponseStatus.Message
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("read audit log: %w", err)
	}
	return out, nil
}
