ALTER TABLE "runs" ADD COLUMN "on_busy" text DEFAULT 'skip' NOT NULL;--> statement-breakpoint
ALTER TABLE "worktrees" ADD COLUMN "size_bytes" bigint;--> statement-breakpoint
CREATE UNIQUE INDEX "runs_concurrency_key_held_idx" ON "runs" USING btree ("concurrency_key") WHERE "runs"."concurrency_key" is not null and "runs"."status" in ('running', 'escalated');--> statement-breakpoint
CREATE INDEX "runs_instance_status_idx" ON "runs" USING btree ("instance_id","status");--> statement-breakpoint
CREATE UNIQUE INDEX "worktrees_path_idx" ON "worktrees" USING btree ("path");