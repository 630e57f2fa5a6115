-- The disclosure label and the upscale option are part of an image's
-- parameters, as they are of the service's job: a label left unset takes
-- the service's default, so it stays NULL here.

ALTER TABLE images
  ADD COLUMN label   boolean,
  ADD COLUMN upscale boolean NOT NULL DEFAULT false;
