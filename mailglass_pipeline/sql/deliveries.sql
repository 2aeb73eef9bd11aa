-- Delivery reads (mailglass_pipeline/deliveries.py), registered in mailglass_pipeline.queries.
-- {delivery_lookup} is the lookup rule over the key relation k; its one home is
-- deliveries.lookup_lateral, which the sweep's find-and-link statement embeds as well.

-- name: lookup_deliveries
-- The delivery id for each (tenant, provider, message id) of the three arrays, in their order, null
-- where nothing matches: one statement for a whole batch, answered from the unique index.
SELECT k.ord, d.id
FROM unnest(CAST(:tenant_ids AS text[]), CAST(:providers AS text[]), CAST(:message_ids AS text[]))
    WITH ORDINALITY AS k (tenant_id, provider, message_id, ord)
LEFT JOIN {delivery_lookup} AS d ON TRUE
ORDER BY k.ord;
