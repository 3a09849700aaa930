-- The database ceiling: the statements the webhook receiver runs for one new auth delivery
-- (app/webhooks/inbox.py record_delivery, app/connections/store.py lock_connection and
-- record_event), as one transaction, with fresh keys. Keep it in step with the receiver.
\set r random(1, 9000000000000000)
\set u random(1, 30000)
BEGIN;
INSERT INTO deliveries (dedupe_key, received_at, webhook_type, operation, success, environment, integration_id, connection_id, body, headers, outcome, error, processed_at, attempts)
  VALUES (md5(:client_id::bigint || '-' || :r::bigint), now(), 'auth', 'creation', true, 'prod', 'github', 'pgb-' || :client_id::bigint || '-' || :r::bigint,
          '{"authMode":"OAUTH2","connectionId":"pgb-' || :client_id::bigint || '-' || :r::bigint || '","environment":"prod","from":"nango","operation":"creation","provider":"github","providerConfigKey":"github","success":' || 'true,"tags":{"end_user_email":"user-' || :u::bigint || '@example.com","end_user_id":"user-' || :u::bigint || '","organization_id":"org-1234"},"type":"auth"}',
          '{"content-type":"application/json","user-agent":"nango-registry-bench"}', 'applied', NULL, now(), 1)
  ON CONFLICT (dedupe_key) DO NOTHING RETURNING id AS delivery_id
\gset
INSERT INTO connections (environment, integration_id, connection_id, provider, auth_mode, end_user_id, end_user_email, organization_id, tags, status, created_at, updated_at)
  VALUES ('prod', 'github', 'pgb-' || :client_id::bigint || '-' || :r::bigint, 'github', 'OAUTH2', 'user-' || :u::bigint, 'user-' || :u::bigint || '@example.com', 'org-1234',
          ('{"end_user_email":"user-' || :u::bigint || '@example.com","end_user_id":"user-' || :u::bigint || '","organization_id":"org-1234"}')::jsonb,
          'active', now(), now())
  ON CONFLICT (environment, integration_id, connection_id) DO NOTHING
  RETURNING id AS connection_pk, environment, integration_id, connection_id, provider, auth_mode, end_user_id, end_user_email,
            end_user_display_name, organization_id, organization_display_name, tags, status, error_type, error_description,
            error_since, last_sync_name, last_sync_model, last_sync_success, last_sync_at, last_sync_error, created_at,
            updated_at, deleted_at
\gset
INSERT INTO connection_tags (connection_pk, key, value)
  VALUES (:connection_pk::bigint, 'end_user_email', 'user-' || :u::bigint || '@example.com'), (:connection_pk::bigint, 'end_user_id', 'user-' || :u::bigint),
         (:connection_pk::bigint, 'organization_id', 'org-1234');
INSERT INTO connection_events (connection_pk, delivery_id, source, action, success, from_status, to_status, detail, created_at)
  VALUES (:connection_pk::bigint, :delivery_id::bigint, 'webhook', 'creation', true, NULL, 'active', '{"operation":"creation"}', now());
COMMIT;
