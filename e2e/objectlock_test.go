package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"

	"github.com/tidemarkdb/tidemark/internal/testenv"
	"github.com/tidemarkdb/tidemark/repo"
	"github.com/tidemarkdb/tidemark/storage"
)

// TestObjectLockRansomwareDrill: a repository made with a lock, a backup and
// archived WAL; then an attacker holding the repository's own credentials
// deletes every version of every object it can list, overwrites every
// object and deletes it again. Every locked version survives; tidemark
// repair versions brings the originals back, a restore recovers to the last
// archived commit and verify --read-data is clean. In governance mode a
// principal without s3:BypassGovernanceRetention is refused the bypass.
func TestObjectLockRansomwareDrill(t *testing.T) {
	for _, mode := range []string{storage.RetentionCompliance, storage.RetentionGovernance} {
		t.Run(mode, func(t *testing.T) {
			e := newBackendEnv(t, "s3-locked", repo.InitOptions{PackSize: 128 << 10,
				Lock: &repo.Lock{Mode: mode, PeriodSeconds: 86400}})
			c := e.backupCluster(15, nil)
			testenv.LoadRandomTable(t, c, "data", 20000)
			c.Exec(t, "CREATE TABLE t (id serial, batch text)")
			e.backup(c)
			c.Exec(t, "INSERT INTO t (batch) SELECT 'a' FROM generate_series(1, 10)")
			c.Exec(t, "INSERT INTO t (batch) SELECT 'last' FROM generate_series(1, 5)")
			switchAndWait(t, c)
			c.Stop()

			u, _ := url.Parse(e.url)
			bucket, prefix := u.Host, strings.Trim(u.Path, "/")+"/"
			attacker := e.s3.Client()
			if mode == storage.RetentionGovernance {
				noBypass := restrictedClient(t, e.s3)
				attemptBypass(t, noBypass, bucket, prefix)
			}
			locked, deleted := attack(t, attacker, bucket, prefix)
			if locked == 0 {
				t.Fatal("the attack found no locked version")
			}
			t.Logf("attack: %d locked versions refused, %d unlocked versions deleted, every object overwritten and deleted", locked, deleted)
			if n, _ := e.count(""); n != 0 {
				t.Fatalf("after the attack the repository still lists %d objects", n)
			}
			if _, _, code := e.tidemark(append([]string{"restore", "--pgdata", e.target("too-soon")}, e.repoArgs()...)...); code == 0 {
				t.Fatal("restore before repair succeeded")
			}

			out := e.mustTidemark("repair", "versions", "--repo", e.url)
			if !strings.Contains(out, "objects restored to their original version") {
				t.Fatalf("repair versions: %s", out)
			}
			dir := e.target("after")
			e.restore(dir)
			r := e.start(15, dir, false)
			waitRecovered(t, r)
			if got := batches(t, r); got != "a:10,last:5" {
				t.Errorf("restore after the attack: batches %s, want a:10,last:5", got)
			}
			r.Stop()
			e.verify(0, "--read-data")
		})
	}
}

// attack deletes every version it can list (refused for locked ones), then
// overwrites every object left visible and deletes it. It returns how many
// version deletes were refused and how many went through, and fails the
// test if a version of a locked object was deleted.
func attack(t *testing.T, c *awss3.Client, bucket, prefix string) (locked, deleted int) {
	ctx := t.Context()
	vs, err := c.ListObjectVersions(ctx, &awss3.ListObjectVersionsInput{Bucket: aws.String(bucket)})
	if err != nil || aws.ToBool(vs.IsTruncated) {
		t.Fatalf("list versions: %v (truncated %v)", err, aws.ToBool(vs.IsTruncated))
	}
	keys := map[string]bool{}
	for _, v := range vs.Versions {
		key := aws.ToString(v.Key)
		keys[key] = true
		_, err := c.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: aws.String(bucket), Key: v.Key, VersionId: v.VersionId})
		covered := repo.LockCovers(strings.TrimPrefix(key, prefix))
		switch {
		case err != nil && covered:
			locked++
		case err != nil:
			t.Errorf("delete of %s (not locked) failed: %v", key, err)
		case covered:
			t.Errorf("the attacker deleted version %s of locked object %s", aws.ToString(v.VersionId), key)
		default:
			deleted++
		}
	}
	for key := range keys {
		if _, err := c.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key),
			Body: bytes.NewReader([]byte("encrypted by ransomware"))}); err != nil {
			t.Errorf("overwrite %s: %v", key, err)
		}
		if _, err := c.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}); err != nil {
			t.Errorf("delete %s: %v", key, err)
		}
	}
	return locked, deleted
}

// restrictedClient returns a client with temporary credentials of the same
// account (STS AssumeRole with a session policy) that may do anything but
// bypass governance retention.
func restrictedClient(t *testing.T, srv *testenv.S3Server) *awss3.Client {
	t.Helper()
	policy, _ := json.Marshal(map[string]any{
		"Version": "2012-10-17",
		"Statement": []map[string]any{
			{"Effect": "Allow", "Action": []string{"s3:*"}, "Resource": []string{"arn:aws:s3:::*"}},
			{"Effect": "Deny", "Action": []string{"s3:BypassGovernanceRetention"}, "Resource": []string{"arn:aws:s3:::*"}},
		},
	})
	stsc := sts.New(sts.Options{Region: srv.Region, BaseEndpoint: aws.String(srv.Endpoint),
		Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, "")})
	out, err := stsc.AssumeRole(t.Context(), &sts.AssumeRoleInput{RoleArn: aws.String("arn:xxx:xxx:xxx:xxxx"),
		RoleSessionName: aws.String("attacker"), Policy: aws.String(string(policy)), DurationSeconds: aws.Int32(3600)})
	if err != nil {
		t.Fatalf("assume role: %v", err)
	}
	cr := out.Credentials
	return awss3.New(awss3.Options{Region: srv.Region, BaseEndpoint: aws.String(srv.Endpoint), UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider(aws.ToString(cr.AccessKeyId), aws.ToString(cr.SecretAccessKey), aws.ToString(cr.SessionToken)),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired})
}

// attemptBypass tries to delete a locked version with the governance bypass
// header: a principal without the permission must be refused.
func attemptBypass(t *testing.T, c *awss3.Client, bucket, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	vs, err := c.ListObjectVersions(ctx, &awss3.ListObjectVersionsInput{Bucket: aws.String(bucket), Prefix: aws.String(prefix + "snapshots/")})
	if err != nil || len(vs.Versions) == 0 {
		t.Fatalf("list snapshot versions as the restricted principal: %v (%d)", err, len(vs.Versions))
	}
	v := vs.Versions[0]
	_, err = c.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: aws.String(bucket), Key: v.Key, VersionId: v.VersionId,
		BypassGovernanceRetention: aws.Bool(true)})
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "AccessDenied" {
		t.Fatalf("governance bypass without the permission: %v, want AccessDenied", err)
	}
	t.Logf("governance bypass without s3:BypassGovernanceRetention: %s", ae.ErrorCode())
}

// TestInitLockDays: init --lock-days refuses a bucket without object lock,
// saying how to make one, and writes nothing; on a bucket with object lock
// the config and the key file are written locked.
func TestInitLockDays(t *testing.T) {
	srv := testenv.MinIO(t)
	e := &restoreEnv{t: t, bin: testenv.Tidemark(t), env: srv.Env(), s3: srv}
	plain := srv.URL(srv.NewBucket(t), "r")
	_, errs, code := e.tidemark("init", "--repo", plain, "--recipient", testRecipient(t), "--lock-days", "7")
	if code == 0 || !strings.Contains(errs, "object lock") || strings.Count(strings.TrimSpace(errs), "\n") > 0 {
		t.Fatalf("init --lock-days on a bucket without object lock: exit %d, %q", code, errs)
	}
	bucket := srv.NewLockedBucket(t)
	out := e.mustTidemark("init", "--repo", srv.URL(bucket, "r"), "--recipient", testRecipient(t), "--lock-days", "7", "--lock-mode", "governance")
	if !strings.Contains(out, "object lock: governance mode, 7 days") {
		t.Fatalf("init --lock-days output: %s", out)
	}
	h, err := srv.Client().HeadObject(t.Context(), &awss3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("r/config")})
	if err != nil || h.ObjectLockMode != "GOVERNANCE" || h.ObjectLockRetainUntilDate.Before(time.Now().Add(6*24*time.Hour)) {
		t.Fatalf("config after init --lock-days 7: %v, mode %q until %v", err, h.ObjectLockMode, h.ObjectLockRetainUntilDate)
	}
	if _, errs, code := e.tidemark("init", "--repo", plain, "--recipient", testRecipient(t), "--lock-mode", "forever", "--lock-days", "1"); code != 2 {
		t.Fatalf("--lock-mode forever: exit %d, %s", code, errs)
	}
}

func testRecipient(t *testing.T) string {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id.Recipient().String()
}
